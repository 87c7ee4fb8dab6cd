"""Loading asks the kernel for expert tensors ahead of converting them (models/load.py:
_read_ahead): every tensor is asked for once, before it is read, in read order, and no more than
the window (plus the one tensor that crosses it) is asked for beyond the tensor being read."""

from moeweave.models.load import _read_ahead


class RecordingCheckpoint:
    def __init__(self, sizes: dict[str, int]):
        self.sizes, self.asked = sizes, []

    def will_need(self, name: str) -> None:
        self.asked.append(name)

    def nbytes(self, name: str) -> int:
        return self.sizes[name]


def test_each_tensor_is_asked_for_once_before_it_is_read_within_the_window():
    sizes = {f"t{i}": size for i, size in enumerate([10, 30, 5, 50, 20, 10, 100, 1])}
    ck = RecordingCheckpoint(sizes)
    read = []
    for name, shape in _read_ahead(ck, [(name, (size,)) for name, size in sizes.items()], window=40):
        assert shape == (sizes[name],)
        assert name in ck.asked
        beyond = ck.asked[ck.asked.index(name) + 1 :]
        assert sum(sizes[n] for n in beyond[:-1]) < 40
        read.append(name)
    assert read == list(sizes) and ck.asked == list(sizes)


def test_a_tensor_larger_than_the_window_still_has_its_successor_asked_for():
    ck = RecordingCheckpoint({"big": 500, "next": 500, "last": 500})
    for name, _ in _read_ahead(ck, [(name, ()) for name in ck.sizes], window=40):
        if name == "big":
            assert ck.asked == ["big", "next"]

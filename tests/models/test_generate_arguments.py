"""MoEModel.generate refuses sampling arguments out of range with a ValueError naming the argument,
before any compute (a NaN temperature otherwise surfaced as torch.multinomial's error on a NaN
probability, a negative one or a top_p of 0 sampled from a distorted distribution)."""

import pytest

from moeweave.models import load


@pytest.fixture
def model(checkpoint):
    _, path = checkpoint
    return load(path, experts="bf16")


@pytest.mark.parametrize("checkpoint", ["mixtral"], indirect=True)
@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(temperature=float("nan")), "temperature must be a finite number >= 0"),
        (dict(temperature=-1.0), "temperature must be a finite number >= 0"),
        (dict(temperature=float("inf")), "temperature must be a finite number >= 0"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=-0.5), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.01), r"top_p must be in \(0, 1\]"),
        (dict(top_p=float("nan")), r"top_p must be in \(0, 1\]"),
        (dict(top_k=-1), "top_k must be >= 0"),
        (dict(max_new_tokens=-1), "max_new_tokens must be >= 0"),
    ],
)
def test_out_of_range_arguments_are_refused(model, arguments, message):
    with pytest.raises(ValueError, match=message):
        model.generate([3, 4, 5], **{"temperature": 0.7, **arguments})


@pytest.mark.parametrize("checkpoint", ["mixtral"], indirect=True)
@pytest.mark.parametrize("prompt", ["", []])
def test_an_empty_prompt_is_refused(model, prompt):
    with pytest.raises(ValueError, match="the prompt is empty"):
        model.generate(prompt)


@pytest.mark.parametrize("checkpoint", ["mixtral"], indirect=True)
def test_the_limits_themselves_are_accepted(model):
    assert model.generate([3, 4, 5], max_new_tokens=0).tokens == []
    sampled = model.generate([3, 4, 5], max_new_tokens=4, temperature=1.0, top_k=0, top_p=1.0, seed=0)
    assert len(sampled.tokens) == 4

// Runs one named test case, or all of them, and exits non-zero on any failed CHECK.
#include "check.h"

namespace moeweave::test {

std::map<std::string, std::function<void()>>& registry() {
  static std::map<std::string, std::function<void()>> cases;
  return cases;
}

int& failures() {
  static int count = 0;
  return count;
}

}  // namespace moeweave::test

int main(int argc, char** argv) {
  auto& cases = moeweave::test::registry();
  int ran = 0;
  for (auto& [name, fn] : cases) {
    if (argc > 1 && name != argv[1]) continue;
    fn();
    ++ran;
  }
  if (ran == 0) {
    std::fprintf(stderr, "no test named %s\n", argc > 1 ? argv[1] : "(any)");
    return 2;
  }
  std::printf("%d passed, %d failed\n", ran - (moeweave::test::failures() ? 1 : 0),
              moeweave::test::failures() ? 1 : 0);
  return moeweave::test::failures() == 0 ? 0 : 1;
}

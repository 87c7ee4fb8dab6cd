// A minimal test harness: TEST(name) registers a case, CHECK records a failure with its line.
// The test binary runs the case named on its command line (ctest passes one per entry) or all.
#pragma once

#include <cstdio>
#include <functional>
#include <map>
#include <string>

namespace moeweave::test {

std::map<std::string, std::function<void()>>& registry();
int& failures();

struct Register {
  Register(const char* name, std::function<void()> fn) { registry()[name] = std::move(fn); }
};

}  // namespace moeweave::test

#define TEST(name)                                                         \
  static void test_##name();                                               \
  static moeweave::test::Register register_##name(#name, test_##name);     \
  static void test_##name()

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++moeweave::test::failures();                                          \
    }                                                                        \
  } while (0)

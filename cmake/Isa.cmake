# Per-file ISA flags. Each kernel has one translation unit per ISA level; only that TU gets the
# level's -m flags, so the library runs on any x86-64 and picks the best level at run time
# (csrc/runtime/isa.cpp). Never -march=native: a wheel must not carry the build machine's ISA.
set(MOEWEAVE_ISA_FLAGS_SCALAR "")
set(MOEWEAVE_ISA_FLAGS_AVX2 -mavx2 -mfma -mf16c)
set(MOEWEAVE_ISA_FLAGS_AVX512 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mfma -mf16c)

# moeweave_add_isa_sources(target SCALAR files... AVX2 files... AVX512 files...)
function(moeweave_add_isa_sources target)
  cmake_parse_arguments(ARG "" "" "SCALAR;AVX2;AVX512" ${ARGN})
  foreach(level SCALAR AVX2 AVX512)
    target_sources(${target} PRIVATE ${ARG_${level}})
    if(MOEWEAVE_ISA_FLAGS_${level})
      set_source_files_properties(${ARG_${level}} TARGET_DIRECTORY ${target}
        PROPERTIES COMPILE_OPTIONS "${MOEWEAVE_ISA_FLAGS_${level}}")
    endif()
  endforeach()
endfunction()

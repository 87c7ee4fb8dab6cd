# Decides whether the CUDA module is built. MOEWEAVE_CUDA=AUTO builds it when a CUDA compiler
# works, ON requires one, OFF skips it. Targets sm_80 and sm_90 only (MOEWEAVE_CUDA_ARCHS
# overrides): each extra architecture multiplies nvcc time.
include(CheckLanguage)
set(MOEWEAVE_CUDA_ARCHS "80;90" CACHE STRING "CUDA architectures of the CUDA module")

# A macro, not a function: enable_language() must run in the directory's own scope.
macro(moeweave_resolve_cuda out_var)
  string(TOUPPER "${MOEWEAVE_CUDA}" _mw_cuda_mode)
  set(${out_var} OFF)
  if(NOT _mw_cuda_mode STREQUAL "OFF")
    check_language(CUDA)
    if(CMAKE_CUDA_COMPILER)
      enable_language(CUDA)
      set(CMAKE_CUDA_STANDARD 17)
      set(${out_var} ON)
      message(STATUS "moeweave: building the CUDA module for sm_${MOEWEAVE_CUDA_ARCHS}")
    elseif(_mw_cuda_mode STREQUAL "ON")
      message(FATAL_ERROR "MOEWEAVE_CUDA=ON but no CUDA compiler was found (is nvcc on PATH?)")
    else()
      message(STATUS "moeweave: no CUDA compiler found, building the CPU module only")
    endif()
  endif()
endmacro()

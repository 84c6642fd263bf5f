// C shim for the Kube module: libyaml's event parser. Its API is plain functions and structs that
// Swift calls directly; the shim only gives the tag of an event and its scalar without union access.
#ifndef EAAS_CYAML_H
#define EAAS_CYAML_H

#include <yaml.h>

/// The library's version string, e.g. "0.2.5".
const char *eaas_yaml_version(void);

#endif

#include "CYAML.h"

const char *eaas_yaml_version(void) { return yaml_get_version_string(); }

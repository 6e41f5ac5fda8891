/* placeholder until the engine lands */
typedef int ztm_relay_placeholder_t;

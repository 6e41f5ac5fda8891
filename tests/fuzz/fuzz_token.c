/* Fuzz target: the invite token parser (controlplane/ca/token.c). A token
 * that parses must encode back to text that parses to the same token. */
#include "controlplane/ca/token.h"
#include "controlplane/store/file.h"

#include <string.h>

#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ztm_token_t t, back;
    if (ztm_token_decode((const char *)data, size, &t) != 0)
        return 0;
    char *text;
    size_t len;
    FUZZ_ASSERT(ztm_token_encode(&t, &text, &len) == 0);
    FUZZ_ASSERT(len <= ZTM_TOKEN_MAX_LEN);
    FUZZ_ASSERT(ztm_token_decode(text, len, &back) == 0);
    FUZZ_ASSERT(back.role == t.role && back.expires == t.expires);
    FUZZ_ASSERT(memcmp(back.pin, t.pin, 32) == 0 && memcmp(back.secret, t.secret, 32) == 0);
    FUZZ_ASSERT(strcmp(back.mesh, t.mesh) == 0 && strcmp(back.name, t.name) == 0);
    FUZZ_ASSERT(back.n_hubs == t.n_hubs);
    for (size_t i = 0; i < t.n_hubs; i++)
        FUZZ_ASSERT(strcmp(back.hubs[i], t.hubs[i]) == 0);
    ztm_file_free_secret(text, len);
    ztm_token_wipe(&t);
    ztm_token_wipe(&back);
    return 0;
}

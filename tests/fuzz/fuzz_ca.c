/* Fuzz target: what the CA module reads from outside — certificates (DER
 * and PEM) into identities, CSRs, private keys, CA pairs. The first byte
 * picks the parser. Parsers must refuse cleanly; an identity that parses
 * must be well-formed. */
#include "controlplane/ca/ca.h"
#include "controlplane/ca/identity.h"
#include "controlplane/ca/keys.h"

#include <string.h>

#include <openssl/evp.h>

#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t which = data[0] % 5;
    data++;
    size--;
    ztm_identity_t id;
    int r = 0;
    switch (which) {
    case 0:
        r = ztm_identity_from_der(data, size, &id);
        break;
    case 1:
        r = ztm_identity_from_pem((const char *)data, size, &id);
        break;
    case 2: {
        ztm_csr_t *csr;
        if (ztm_csr_parse(data, size, &csr) == 0) {
            char cn[128];
            (void)ztm_csr_common_name(csr, cn, sizeof(cn));
            ztm_csr_free(csr);
        }
        return 0;
    }
    case 3: {
        EVP_PKEY *k;
        if (ztm_key_from_pem((const char *)data, size, &k) == 0)
            EVP_PKEY_free(k);
        return 0;
    }
    case 4: {
        ztm_ca_t *ca;
        size_t half = size / 2;
        if (ztm_ca_load((const char *)data, half, (const char *)data + half, size - half, &ca) == 0)
            ztm_ca_free(ca);
        return 0;
    }
    }
    if (r == 0) {
        FUZZ_ASSERT(ztm_mesh_valid(id.mesh) && ztm_id_valid(id.id) && ztm_name_valid(id.name));
        FUZZ_ASSERT(ztm_role_name(id.role) != NULL);
        FUZZ_ASSERT(strlen(id.serial) > 0);
    }
    return 0;
}

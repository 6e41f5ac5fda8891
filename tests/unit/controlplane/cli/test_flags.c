/* Command-line value parsers. */
#include "controlplane/cli/flags.h"
#include "tests/unit/check.h"

int main(void)
{
    unsigned long v;
    uint64_t ns;
    CHECK(ztm_flag_ulong("1", 1, 10, &v) && v == 1);
    CHECK(ztm_flag_ulong("10", 1, 10, &v) && v == 10);
    CHECK(!ztm_flag_ulong("0", 1, 10, &v));
    CHECK(!ztm_flag_ulong("11", 1, 10, &v));
    CHECK(!ztm_flag_ulong("abc", 1, 10, &v));
    CHECK(!ztm_flag_ulong("-1", 0, 10, &v));
    CHECK(!ztm_flag_ulong(" 1", 0, 10, &v));
    CHECK(!ztm_flag_ulong("1x", 0, 10, &v));
    CHECK(!ztm_flag_ulong("", 0, 10, &v));
    CHECK(!ztm_flag_ulong("99999999999999999999999", 0, 10, &v));
    CHECK(ztm_flag_seconds("0.5", false, &ns) && ns == 500000000ull);
    CHECK(ztm_flag_seconds("300", false, &ns) && ns == 300000000000ull);
    CHECK(ztm_flag_seconds("0", true, &ns) && ns == 0);
    CHECK(!ztm_flag_seconds("0", false, &ns));
    CHECK(!ztm_flag_seconds("-1", true, &ns));
    CHECK(!ztm_flag_seconds("nan", true, &ns));
    CHECK(!ztm_flag_seconds("inf", true, &ns));
    CHECK(!ztm_flag_seconds("1e99", true, &ns));
    CHECK(!ztm_flag_seconds("5s", true, &ns));
    return check_done("flags");
}

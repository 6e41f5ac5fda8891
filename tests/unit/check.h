/* A minimal unit-test helper: CHECK records a failure with file:line and the
 * expression, and check_done() prints one summary line and returns the exit
 * code ctest reads. */
#ifndef ZTM_TESTS_CHECK_H
#define ZTM_TESTS_CHECK_H

#include <stdio.h>

static int check_failures, check_count;

#define CHECK(expr)                                                                \
    do {                                                                           \
        check_count++;                                                             \
        if (!(expr)) {                                                             \
            check_failures++;                                                      \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #expr); \
        }                                                                          \
    } while (0)

#define CHECK_EQ(a, b)                                                             \
    do {                                                                           \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);            \
        check_count++;                                                             \
        if (check_a_ != check_b_) {                                                \
            check_failures++;                                                      \
            fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %s (%lld != %lld)\n", __FILE__, \
                    __LINE__, #a, #b, check_a_, check_b_);                         \
        }                                                                          \
    } while (0)

static inline int check_done(const char *name)
{
    printf("%s: %d checks, %d failed\n", name, check_count, check_failures);
    return check_failures ? 1 : 0;
}

#endif

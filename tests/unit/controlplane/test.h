/* A few assertion macros for the control plane's unit tests: each failed
 * check prints file:line and the expression and marks the test failed; the
 * test keeps going so one run shows every failure. TEST_END returns the
 * process exit code (77 for "skipped" is the caller's to return). */
#ifndef ZTM_TESTS_UNIT_CONTROLPLANE_TEST_H
#define ZTM_TESTS_UNIT_CONTROLPLANE_TEST_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_failures;

#define CHECK(expr)                                                                    \
    do {                                                                               \
        if (!(expr)) {                                                                 \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #expr);   \
            test_failures++;                                                           \
        }                                                                              \
    } while (0)

#define CHECK_INT(a, b)                                                                \
    do {                                                                               \
        long long a_ = (long long)(a), b_ = (long long)(b);                            \
        if (a_ != b_) {                                                                \
            fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", __FILE__,      \
                    __LINE__, #a, a_, #b, b_);                                         \
            test_failures++;                                                           \
        }                                                                              \
    } while (0)

#define CHECK_STR(a, b)                                                                \
    do {                                                                               \
        const char *a_ = (a), *b_ = (b);                                               \
        if (!a_ || !b_ || strcmp(a_, b_) != 0) {                                       \
            fprintf(stderr, "%s:%d: %s == \"%s\", expected \"%s\"\n", __FILE__,        \
                    __LINE__, #a, a_ ? a_ : "(null)", b_ ? b_ : "(null)");             \
            test_failures++;                                                           \
        }                                                                              \
    } while (0)

#define CHECK_MEM(a, b, n) CHECK(memcmp((a), (b), (n)) == 0)

/* For a precondition without which the rest of the test is meaningless. */
#define REQUIRE(expr)                                                                  \
    do {                                                                               \
        if (!(expr)) {                                                                 \
            fprintf(stderr, "%s:%d: required: %s\n", __FILE__, __LINE__, #expr);       \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

#define TEST_END()                                                                     \
    do {                                                                               \
        if (test_failures)                                                             \
            fprintf(stderr, "%d check(s) failed\n", test_failures);                    \
        return test_failures ? 1 : 0;                                                  \
    } while (0)

#endif

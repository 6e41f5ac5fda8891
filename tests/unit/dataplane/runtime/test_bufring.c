/* Provided buffer ring: receives pick buffers, an empty ring gives -ENOBUFS
 * (back-pressure), and references return buffers to the kernel. */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dataplane/runtime/bufring.h"
#include "tests/unit/check.h"

static struct io_uring ring;

static int recv_one(ztm_bufring_t *br, int fd, uint32_t *flags)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    io_uring_prep_recv(sqe, fd, NULL, ztm_bufring_buf_size(br), 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = ztm_bufring_gid(br);
    io_uring_submit(&ring);
    struct io_uring_cqe *cqe;
    if (io_uring_wait_cqe(&ring, &cqe) < 0)
        return -999;
    int res = cqe->res;
    *flags = cqe->flags;
    io_uring_cqe_seen(&ring, cqe);
    return res;
}

int main(void)
{
    CHECK_EQ(io_uring_queue_init(64, &ring, 0), 0);
    ztm_bufring_t *br = NULL;
    CHECK_EQ(ztm_bufring_new(&ring, 3, 3, 4096, &br), -EINVAL); /* not a power of two */
    CHECK_EQ(ztm_bufring_new(&ring, 3, 4, 4096, &br), 0);
    CHECK_EQ(ztm_bufring_available(br), 4);
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);

    uint16_t held[4];
    for (int i = 0; i < 4; i++) {
        char msg[16];
        int n = snprintf(msg, sizeof(msg), "msg-%d", i);
        CHECK_EQ(write(sv[1], msg, (size_t)n), n);
        uint32_t flags;
        int res = recv_one(br, sv[0], &flags);
        CHECK_EQ(res, n);
        CHECK(flags & IORING_CQE_F_BUFFER);
        held[i] = (uint16_t)(flags >> IORING_CQE_BUFFER_SHIFT);
        ztm_bufring_take(br, held[i]);
        CHECK(memcmp(ztm_bufring_addr(br, held[i]), msg, (size_t)n) == 0);
    }
    CHECK_EQ(ztm_bufring_available(br), 0);

    /* Empty ring: the receive fails with -ENOBUFS instead of waiting. */
    CHECK_EQ(write(sv[1], "x", 1), 1);
    uint32_t flags;
    CHECK_EQ(recv_one(br, sv[0], &flags), -ENOBUFS);

    /* A shared buffer comes back only after its last reference. */
    ztm_bufring_ref(br, held[0]);
    ztm_bufring_put(br, held[0]);
    CHECK_EQ(ztm_bufring_available(br), 0);
    ztm_bufring_put(br, held[0]);
    CHECK_EQ(ztm_bufring_available(br), 1);
    CHECK_EQ(ztm_bufring_publish(br), 1);
    CHECK_EQ(ztm_bufring_publish(br), 0);
    int res = recv_one(br, sv[0], &flags);
    CHECK_EQ(res, 1);
    CHECK_EQ((uint16_t)(flags >> IORING_CQE_BUFFER_SHIFT), held[0]);
    ztm_bufring_take(br, held[0]);
    for (int i = 0; i < 4; i++)
        ztm_bufring_put(br, held[i]);
    ztm_bufring_publish(br);
    CHECK_EQ(ztm_bufring_available(br), 4);

    ztm_bufring_free(br, &ring);
    close(sv[0]);
    close(sv[1]);
    io_uring_queue_exit(&ring);
    return check_done("bufring");
}

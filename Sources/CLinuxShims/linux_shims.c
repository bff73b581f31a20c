#define _GNU_SOURCE
#include <fcntl.h>
#include <unistd.h>
#include <sys/uio.h>
#include <malloc.h>
#include <spawn.h>
#include "linux_shims.h"

int tessera_punch_hole(int fd, off_t offset, off_t length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
}

off_t tessera_seek_data(int fd, off_t offset) { return lseek(fd, offset, SEEK_DATA); }

off_t tessera_seek_hole(int fd, off_t offset) { return lseek(fd, offset, SEEK_HOLE); }

int tessera_start_writeback(int fd, off_t offset, off_t length) {
    return sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE);
}

int tessera_prefetch(int fd, off_t offset, off_t length) {
    return posix_fadvise(fd, offset, length, POSIX_FADV_WILLNEED);
}

ssize_t tessera_pread_nowait(int fd, void *buffer, size_t length, off_t offset) {
    struct iovec iov = { .iov_base = buffer, .iov_len = length };
    return preadv2(fd, &iov, 1, offset, RWF_NOWAIT);
}

int tessera_set_mmap_threshold(int bytes) { return mallopt(M_MMAP_THRESHOLD, bytes); }

int tessera_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int tessera_spawn_add_closefrom(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}

// Linux calls that Glibc's Swift overlay does not expose (they need _GNU_SOURCE or <malloc.h>).
#pragma once
#include <sys/types.h>
#include <spawn.h>

/// fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE); returns 0 or -1 with errno set.
int tessera_punch_hole(int fd, off_t offset, off_t length);
/// lseek(fd, offset, SEEK_DATA); returns the offset or -1 with errno set.
off_t tessera_seek_data(int fd, off_t offset);
/// lseek(fd, offset, SEEK_HOLE); returns the offset or -1 with errno set.
off_t tessera_seek_hole(int fd, off_t offset);
/// sync_file_range(SYNC_FILE_RANGE_WRITE): starts writeback of a range, does not wait.
int tessera_start_writeback(int fd, off_t offset, off_t length);
/// posix_fadvise(POSIX_FADV_WILLNEED): starts reading a range into the page cache.
int tessera_prefetch(int fd, off_t offset, off_t length);
/// preadv2(RWF_NOWAIT) of one buffer: copies only what the page cache holds; fails with
/// EAGAIN instead of waiting for the disk.
ssize_t tessera_pread_nowait(int fd, void *buffer, size_t length, off_t offset);
/// mallopt(M_MMAP_THRESHOLD, bytes): a fixed threshold (switches glibc's dynamic one off).
int tessera_set_mmap_threshold(int bytes);
/// pipe2(fds, O_CLOEXEC): a pipe no child inherits unless it is dup2'ed; 0 or -1 with errno set.
int tessera_pipe_cloexec(int fds[2]);
/// posix_spawn_file_actions_addclosefrom_np(actions, from): the spawned child closes every
/// descriptor from `from` up (glibc 2.34+); 0 or an error number.
int tessera_spawn_add_closefrom(posix_spawn_file_actions_t *actions, int from);

/* Durable files: whole-file atomic replacement and bounded reads.
 *
 * Everything the control plane keeps on disk (the store's file, the CA,
 * an agent's key and certificate, the CLI's credentials) is written with
 * ztm_file_write_atomic: a crash at any instant leaves either the old file
 * or the new one, never a mix, and a successful return means the new file
 * is on stable storage under its name. */
#ifndef ZTM_CONTROLPLANE_STORE_FILE_H
#define ZTM_CONTROLPLANE_STORE_FILE_H

#include <stddef.h>
#include <sys/types.h>

/* Replaces PATH with LEN bytes of DATA, created with MODE (e.g. 0600 for
 * keys; the umask does not apply): writes a temporary file in the same
 * directory, fsyncs it, renames it over PATH and fsyncs the directory. On
 * error the temporary file is removed and PATH is left as it was (except
 * when only the final directory fsync fails: PATH then holds the new data
 * but its durability is unknown). Returns 0 or -errno. */
int ztm_file_write_atomic(const char *path, const void *data, size_t len, mode_t mode);

/* Reads the whole regular file PATH into a new buffer (*DATA, with a NUL
 * after the last byte so text can be used as a string; free() it, or
 * ztm_file_free_secret() for key material). Returns 0, -ENOENT, -EFBIG when
 * the file is larger than MAX, -EINVAL when PATH is not a regular file, or
 * another -errno. */
int ztm_file_read(const char *path, size_t max, void **data, size_t *len);

/* Wipes LEN bytes at P, then frees P. For buffers that held keys. */
void ztm_file_free_secret(void *p, size_t len);

/* Creates directory PATH and its missing parents with MODE (existing ones
 * are left alone). Returns 0 or -errno (-ENOTDIR when PATH exists and is
 * not a directory). */
int ztm_file_mkdirs(const char *path, mode_t mode);

/* fsyncs the directory holding PATH (PATH itself when it is a directory). */
int ztm_file_sync_dir(const char *path);

#endif

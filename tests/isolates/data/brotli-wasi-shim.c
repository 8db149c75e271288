/* This wasi-libc has no chmod/chown (WASI preview 1 has no permissions); brotli only
   calls them to copy a file's mode and owner to its output, so succeeding is right. */
#include <sys/types.h>
int chmod(const char *path, mode_t mode) { (void)path; (void)mode; return 0; }
int chown(const char *path, uid_t owner, gid_t group) { (void)path; (void)owner; (void)group; return 0; }

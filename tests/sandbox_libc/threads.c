/* Installs the seccomp filter read from argv[1] (the raw sock_filter
 * array voxgate::privilege::seccomp::program() builds), then creates
 * threads and tries forbidden calls. Built by tests/sandbox_libc.rs with
 * gcc (glibc: pthread_create tries clone3, then clone) and musl-gcc -static
 * (musl: clone only), as the two C libraries voxgate ships with.
 * Prints one line per check; exits 0 when every thread ran. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

/* linux/filter.h and linux/seccomp.h, which musl-gcc does not see. */
struct sock_filter { unsigned short code; unsigned char jt, jf; unsigned int k; };
struct sock_fprog { unsigned short len; struct sock_filter *filter; };
#define SECCOMP_SET_MODE_FILTER 1
#define SECCOMP_FILTER_FLAG_TSYNC 1

static void *run(void *a) { (void)a; return (void *)(long)syscall(SYS_gettid); }

static void report(const char *what, long r) {
  printf("%s %ld %d\n", what, r, r < 0 ? errno : 0);
}

int main(int argc, char **argv) {
  static struct sock_filter f[1024];
  FILE *fp = argc > 1 ? fopen(argv[1], "rb") : NULL;
  if (!fp) { perror("filter"); return 2; }
  size_t n = fread(f, sizeof f[0], 1024, fp);
  fclose(fp);
  struct sock_fprog prog = { .len = (unsigned short)n, .filter = f };
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) { perror("no_new_privs"); return 2; }
  if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog)) {
    perror("seccomp"); return 2;
  }
  int ran = 0;
  for (int i = 0; i < 4; i++) {
    pthread_t t; void *r = 0;
    int e = pthread_create(&t, 0, run, 0);
    if (e) { printf("pthread_create failed %d\n", e); return 1; }
    pthread_join(t, &r);
    if ((long)r > 0) ran++;
  }
  printf("threads %d\n", ran);
  errno = 0; report("clone3", syscall(435, 0, 0));
  errno = 0; report("unshare", unshare(0x10000000 | 0x40000000));
  errno = 0; report("af_packet", socket(17, 3, 0));
  errno = 0; report("af_inet", socket(2, 2, 0));
  errno = 0; report("set_dumpable", prctl(PR_SET_DUMPABLE, 1));
  errno = 0; report("set_name", prctl(PR_SET_NAME, "vg-check"));
  errno = 0; report("tiocsti", syscall(SYS_ioctl, 0, 0x5412, "x"));
  fflush(stdout);
  return ran == 4 ? 0 : 1;
}

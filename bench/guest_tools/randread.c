/*
 * randread: random O_DIRECT reads from a block device or file, several in flight.
 *
 *   randread PATH THREADS SECONDS [BLOCK]
 *
 * THREADS threads each pread() one BLOCK-byte (default 4096) block at a random
 * BLOCK-aligned offset of PATH, again and again, for SECONDS seconds; every thread has
 * one request outstanding, so THREADS requests are in flight. At the end it prints one
 * line:
 *
 *   randread: threads=4 block=4096 seconds=10.001 ops=12345 iops=1234.4 errors=0
 *
 * Built static (gcc -O2 -static -pthread) for the benchmark guest, which has busybox only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int fd;
static size_t block = 4096;
static uint64_t blocks;
static volatile int stop;

struct worker {
	pthread_t thread;
	uint64_t seed;
	uint64_t ops;
	uint64_t errors;
};

static uint64_t next_random(uint64_t *state)
{
	/* xorshift64*: plenty for picking offsets */
	uint64_t x = *state;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*state = x;
	return x * 0x2545F4914F6CDD1DULL;
}

static void *work(void *arg)
{
	struct worker *w = arg;
	void *buf;

	if (posix_memalign(&buf, 4096, block) != 0) {
		w->errors++;
		return NULL;
	}
	while (!stop) {
		off_t offset = (off_t)(next_random(&w->seed) % blocks) * (off_t)block;
		ssize_t got = pread(fd, buf, block, offset);
		if (got == (ssize_t)block)
			w->ops++;
		else
			w->errors++;
	}
	free(buf);
	return NULL;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t size_of(const char *path)
{
	struct stat st;
	uint64_t bytes = 0;

	if (fstat(fd, &st) != 0) {
		perror(path);
		exit(1);
	}
	if (S_ISBLK(st.st_mode)) {
		if (ioctl(fd, BLKGETSIZE64, &bytes) != 0) {
			perror("BLKGETSIZE64");
			exit(1);
		}
		return bytes;
	}
	return (uint64_t)st.st_size;
}

int main(int argc, char **argv)
{
	if (argc < 4 || argc > 5) {
		fprintf(stderr, "usage: randread PATH THREADS SECONDS [BLOCK]\n");
		return 2;
	}
	int threads = atoi(argv[2]);
	double seconds = atof(argv[3]);
	if (argc == 5)
		block = (size_t)strtoul(argv[4], NULL, 0);
	if (threads < 1 || threads > 256 || !(seconds > 0) || block < 512 || block % 512) {
		fprintf(stderr, "randread: bad arguments\n");
		return 2;
	}
	fd = open(argv[1], O_RDONLY | O_DIRECT);
	if (fd < 0) {
		fprintf(stderr, "randread: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	blocks = size_of(argv[1]) / block;
	if (blocks == 0) {
		fprintf(stderr, "randread: %s is smaller than one block\n", argv[1]);
		return 1;
	}

	struct worker *workers = calloc((size_t)threads, sizeof(*workers));
	if (!workers)
		return 1;
	double started = now();
	for (int i = 0; i < threads; i++) {
		workers[i].seed = 0x9E3779B97F4A7C15ULL * (uint64_t)(i + 1) ^ (uint64_t)getpid();
		if (pthread_create(&workers[i].thread, NULL, work, &workers[i]) != 0) {
			fprintf(stderr, "randread: cannot start thread %d\n", i);
			return 1;
		}
	}
	struct timespec nap = { (time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9) };
	while (nanosleep(&nap, &nap) != 0 && errno == EINTR)
		;
	stop = 1;
	uint64_t ops = 0, errors = 0;
	for (int i = 0; i < threads; i++) {
		pthread_join(workers[i].thread, NULL);
		ops += workers[i].ops;
		errors += workers[i].errors;
	}
	double elapsed = now() - started;
	printf("randread: threads=%d block=%zu seconds=%.3f ops=%llu iops=%.1f errors=%llu\n", threads,
	       block, elapsed, (unsigned long long)ops, (double)ops / elapsed,
	       (unsigned long long)errors);
	return errors ? 1 : 0;
}

/*
 * cni: the program behind every /opt/cni/bin/<type> link, the fast path of each plugin start.
 *
 * It does what pycni.launch describes, without an interpreter to start first:
 * - CNI_COMMAND=VERSION is answered here, from the table `make build` generates from the
 *   registry (build/launcher_table.py: the same JSON `pycni <type>` prints);
 * - anything else is handed to `pycni daemon` when one listens on $PYCNI_DAEMON_SOCKET
 *   (default /run/pycni/daemon.sock; empty: never): the caller's fds 0, 1 and 2 passed with
 *   SCM_RIGHTS beside a length-prefixed payload (cwd, argc, argv..., KEY=VALUE... joined by
 *   NUL), answered by a 4-byte big-endian exit status;
 * - with no server, a refusal, or a name that is not a type, it execs `pycni` beside it (the
 *   full program) with the same argv, which runs the plugin itself.
 * A server lost in the middle of a run is a CNI error (code 999) on stdout, exit status 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "launcher_table.h" /* PLUGIN_VERSIONS[]: {type, VERSION answer}, NULL-terminated */

#define PROGRAM "pycni"
#define SOCKET_ENV "PYCNI_DAEMON_SOCKET"
#define DEFAULT_SOCKET "/run/pycni/daemon.sock"
#define REFUSED 0xFFFFFFFFu
#define RUN_HERE (-1L)

extern char **environ;

/* A CNI error (code 999) on stdout, the message JSON-escaped; the exit status. */
static int fail(const char *what, const char *detail) {
    char message[PATH_MAX + 256];
    snprintf(message, sizeof message, "%s%s", what, detail);
    fputs("{\"cniVersion\": \"0.1.0\", \"code\": 999, \"msg\": \"", stdout);
    for (const unsigned char *c = (const unsigned char *)message; *c; c++) {
        if (*c == '"' || *c == '\\')
            printf("\\%c", *c);
        else if (*c < 0x20)
            printf("\\u%04x", *c);
        else
            putchar(*c);
    }
    fputs("\"}\n", stdout);
    fflush(stdout);
    return 1;
}

/* A growing buffer of NUL-joined parts. */
struct buffer {
    char *data;
    size_t size, capacity;
};

/* `part` after a NUL separator (none before the first part; cwd, never empty, is first). */
static int append(struct buffer *buf, const char *part) {
    size_t length = strlen(part), needed = length + (buf->size > 0);
    if (buf->size + needed > buf->capacity) {
        size_t capacity = buf->capacity ? buf->capacity : 4096;
        while (buf->size + needed > capacity)
            capacity *= 2;
        char *grown = realloc(buf->data, capacity);
        if (!grown)
            return -1;
        buf->data = grown;
        buf->capacity = capacity;
    }
    if (buf->size > 0)
        buf->data[buf->size++] = '\0';
    memcpy(buf->data + buf->size, part, length);
    buf->size += length;
    return 0;
}

/* cwd, argc, argv..., KEY=VALUE... joined by NUL (pycni.launch.encode). */
static int encode(struct buffer *buf, int argc, char **argv) {
    char cwd[PATH_MAX], count[16];
    if (!getcwd(cwd, sizeof cwd))
        return -1;
    snprintf(count, sizeof count, "%d", argc);
    if (append(buf, cwd) || append(buf, count))
        return -1;
    for (int i = 0; i < argc; i++)
        if (append(buf, argv[i]))
            return -1;
    for (char **entry = environ; *entry; entry++)
        if (append(buf, *entry))
            return -1;
    return 0;
}

static int send_request(int sock, const struct buffer *payload) {
    uint32_t size = (uint32_t)payload->size;
    unsigned char header[4] = {size >> 24, size >> 16, size >> 8, size};
    struct iovec iov[2] = {{header, sizeof header}, {payload->data, payload->size}};
    int fds[3] = {0, 1, 2};
    union {
        struct cmsghdr align;
        char space[CMSG_SPACE(sizeof fds)];
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 2, .msg_control = control.space,
                         .msg_controllen = sizeof control.space};
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(cmsg), fds, sizeof fds);
    ssize_t sent;
    do
        sent = sendmsg(sock, &msg, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    if (sent < 0)
        return -1;
    size_t done = (size_t)sent, total = sizeof header + payload->size;
    while (done < total) { /* the rest of a large environment, the fds already passed */
        const char *from = done < sizeof header ? (const char *)header + done
                                                : payload->data + (done - sizeof header);
        size_t length = done < sizeof header ? sizeof header - done : total - done;
        sent = send(sock, from, length, MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR)
            continue;
        if (sent <= 0)
            return -1;
        done += (size_t)sent;
    }
    return 0;
}

/* Have the server run this plugin start: its exit status, or RUN_HERE. */
static long forward(int argc, char **argv) {
    const char *path = getenv(SOCKET_ENV);
    if (!path)
        path = DEFAULT_SOCKET;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (!*path || strlen(path) >= sizeof addr.sun_path)
        return RUN_HERE;
    strcpy(addr.sun_path, path);
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0)
        return RUN_HERE;
    if (connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0) {
        close(sock); /* no server, or a stale socket */
        return RUN_HERE;
    }
    struct buffer payload = {0};
    unsigned char answer[4];
    size_t got = 0;
    /* The answer is read even when sending failed: a server that refuses may answer and hang
     * up before reading the whole request. */
    if (encode(&payload, argc, argv) == 0) {
        send_request(sock, &payload);
        while (got < sizeof answer) {
            ssize_t n = recv(sock, answer + got, sizeof answer - got, 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            got += (size_t)n;
        }
    }
    free(payload.data);
    close(sock);
    if (got < sizeof answer) /* the server and its child both died under us */
        return fail("pycni daemon: lost the connection to the server", "");
    uint32_t status = (uint32_t)answer[0] << 24 | (uint32_t)answer[1] << 16 |
                      (uint32_t)answer[2] << 8 | answer[3];
    return status == REFUSED ? RUN_HERE : (long)(status & 0xFF);
}

static const char *version_answer(const char *called_as) {
    for (const struct plugin_version *entry = PLUGIN_VERSIONS; entry->type; entry++)
        if (strcmp(entry->type, called_as) == 0)
            return entry->answer;
    return NULL;
}

int main(int argc, char **argv) {
    const char *called_as = argc > 0 ? argv[0] : "";
    const char *slash = strrchr(called_as, '/');
    called_as = slash ? slash + 1 : called_as;
    const char *answer = version_answer(called_as);
    if (answer) {
        const char *command = getenv("CNI_COMMAND");
        if (command && strcmp(command, "VERSION") == 0) {
            fputs(answer, stdout);
            return fflush(stdout) == 0 ? 0 : 1;
        }
        long status = forward(argc, argv);
        if (status != RUN_HERE)
            return (int)status;
    }
    char program[PATH_MAX];
    ssize_t length = readlink("/proc/self/exe", program, sizeof program - sizeof PROGRAM - 1);
    if (length < 0)
        return fail("cannot find the program beside the launcher: ", strerror(errno));
    program[length] = '\0';
    char *dir_end = strrchr(program, '/');
    strcpy(dir_end ? dir_end + 1 : program, PROGRAM);
    char *fallback[] = {PROGRAM, NULL};
    execv(program, argc > 0 ? argv : fallback);
    char detail[PATH_MAX + 64];
    snprintf(detail, sizeof detail, "%s: %s", program, strerror(errno));
    return fail("cannot run ", detail);
}

/*
 * sandbox-shell: the sandbox user's login shell (/etc/passwd), installed as
 * /usr/local/lib/rds/sandbox-shell. It execs /bin/bash with the arguments sshd gave it, after
 * turning address-space layout randomization off for this process and everything it starts
 * (personality ADDR_NO_RANDOMIZE) when the kernel command line says rds.sandbox_aslr=off.
 *
 * Why: under software emulation (TCG) QEMU keys its translated code on the guest's virtual
 * addresses, so a process whose bash, ld.so and libc land at new random addresses is
 * translated afresh: ~60 % of an exec's guest CPU. With the session's processes at fixed
 * addresses every exec reuses the code the last one translated (exec throughput ~2.5x on a
 * TCG host; BENCHMARKS.md). The manager adds the word under TCG only
 * (app/virt/domain_xml.py, kernel_cmdline); under KVM randomization costs nothing and stays on.
 *
 * Only the sandbox user's own processes lose randomization: root's (sshd, the guest agent)
 * keep it (kernel.randomize_va_space stays 2), and the kernel drops the flag on a setuid or
 * setgid exec (the image has no such file anyway).
 *
 * Static (built by guest/build/build_image.py with gcc -static): no loader or libc to map at
 * random addresses before the flag is set.
 */
#include <fcntl.h>
#include <string.h>
#include <sys/personality.h>
#include <unistd.h>

#define WORD "rds.sandbox_aslr=off"

static int randomization_off(void)
{
    char line[4096];
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, line, sizeof line - 1);
    close(fd);
    if (n <= 0)
        return 0;
    line[n] = '\0';
    for (char *word = strtok(line, " \t\n"); word; word = strtok(NULL, " \t\n"))
        if (strcmp(word, WORD) == 0)
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    char *fallback[] = {"bash", NULL};
    if (randomization_off()) {
        int current = personality(0xffffffff);
        if (current != -1)
            personality((unsigned long)current | ADDR_NO_RANDOMIZE);
    }
    if (argc < 1)
        argv = fallback;
    /* sshd names a login shell "-<basename>": bash reads a leading '-' as "login". */
    argv[0] = argv[0][0] == '-' ? "-bash" : "bash";
    execv("/bin/bash", argv);
    return 127;
}

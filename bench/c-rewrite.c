/* The yardstick for qemu-kvm-wrapper's start-up cost: the least a C program can do for
 * the same job. For each -cpu/--cpu value, insert ",kvm=off,hv-vendor-id=MyFake_KVM"
 * after the model name unless the value mentions kvm or hv-vendor-id, then execv
 * TARGET (set with -DTARGET=...). No config file, no sysfs: a lower bound.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char inject[] = ",kvm=off,hv-vendor-id=MyFake_KVM";

int main(int argc, char **argv)
{
    (void)argc;
    for (char **a = argv + 1; *a != NULL; a++) {
        if ((strcmp(*a, "-cpu") != 0 && strcmp(*a, "--cpu") != 0) || a[1] == NULL)
            continue;
        char *v = *++a;
        if (strstr(v, "kvm") != NULL || strstr(v, "vendor") != NULL ||
            strcmp(v, "help") == 0 || strcmp(v, "?") == 0)
            continue;
        size_t model = strcspn(v, ",");
        char *n = malloc(strlen(v) + sizeof inject);
        if (n == NULL)
            return 127;
        memcpy(n, v, model);
        memcpy(n + model, inject, sizeof inject - 1);
        strcpy(n + model + sizeof inject - 1, v + model);
        fprintf(stderr, "c-rewrite: -cpu %s -> %s\n", v, n);
        *a = n;
    }
    execv(TARGET, argv);
    perror(TARGET);
    return 127;
}

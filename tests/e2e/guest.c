/* The end-to-end test's guest: a 32-bit multiboot kernel that prints the hypervisor
 * signature (CPUID leaf 0x40000000: EBX, ECX, EDX) on COM1 and powers the VM off.
 *
 *   gcc -m32 -ffreestanding -nostdlib -fno-pic -no-pie -static -O2 \
 *       -Wl,--build-id=none -Wl,-Ttext=0x100000 -o guest.elf guest.c
 *
 * It prints "HVSIG:[KVMKVMKVM]" under KVM, "HVSIG:[]" when the hypervisor is hidden
 * (kvm=off without Hyper-V enlightenments), "HVSIG:[TCGTCGTCGTCG]" under QEMU 7+ TCG.
 * Then the KVM feature leaf (0x40000001, EAX) when the signature is KVM's:
 * "KVMFEAT:[0x01007afb] kvmclock=1" (bit 0 or 3: the kvmclock clock source), or
 * "KVMFEAT:[none] kvmclock=0" when it is gone, as with kvm=off.
 */

#define MB_MAGIC 0x1BADB002u
#define MB_FLAGS 0x00000003u /* page-align modules, give memory info */

/* .text.startup comes first in GNU ld's default layout, and QEMU looks for the header
 * in the first 8 KiB of the file. */
__attribute__((section(".text.startup"), used, aligned(4)))
static const unsigned int multiboot_header[3] = {
    MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)};

static inline void outb(unsigned short port, unsigned char v)
{
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline void outw(unsigned short port, unsigned short v)
{
    __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port));
}

static inline unsigned char inb(unsigned short port)
{
    unsigned char v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static void putc_com1(char c)
{
    while ((inb(0x3f8 + 5) & 0x20) == 0)
        ;
    outb(0x3f8, (unsigned char)c);
}

static void puts_com1(const char *s)
{
    while (*s)
        putc_com1(*s++);
}

static void puthex_com1(unsigned int v)
{
    puts_com1("0x");
    for (int i = 7; i >= 0; i--)
        putc_com1("0123456789abcdef"[(v >> (4 * i)) & 0xf]);
}

void _start(void)
{
    unsigned int a = 0x40000000u, b, c, d;
    __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "=c"(c), "=d"(d));
    unsigned int regs[3] = {b, c, d};
    char sig[13];
    int n = 0;
    for (int r = 0; r < 3; r++)
        for (int i = 0; i < 4; i++) {
            char ch = (char)(regs[r] >> (8 * i));
            if (ch >= 0x20 && ch < 0x7f)
                sig[n++] = ch;
        }
    sig[n] = 0;
    puts_com1("HVSIG:[");
    puts_com1(sig);
    puts_com1("]\n");
    int kvm = n == 9 && sig[0] == 'K' && sig[3] == 'K' && sig[6] == 'K';
    if (kvm) {
        unsigned int fa = 0x40000001u, fb, fc, fd;
        __asm__ volatile("cpuid" : "+a"(fa), "=b"(fb), "=c"(fc), "=d"(fd));
        puts_com1("KVMFEAT:[");
        puthex_com1(fa);
        puts_com1((fa & 0x9u) ? "] kvmclock=1\n" : "] kvmclock=0\n");
    } else {
        puts_com1("KVMFEAT:[none] kvmclock=0\n");
    }
    /* ACPI S5 on QEMU's i440fx (PM base 0x600) and q35 (0x604 on the ICH9 LPC) */
    outw(0x604, 0x2000);
    outw(0xb004, 0x2000);
    for (;;)
        __asm__ volatile("cli; hlt");
}

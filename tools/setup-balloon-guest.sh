#!/bin/sh
# A Linux guest with a working virtio balloon, for the functional tests of
# the memory meters (no-OS guests report no balloon statistics): Debian's
# cloud kernel and an initramfs of busybox-static that loads the virtio
# balloon driver and idles. Writes tmp/balloon-guest/{vmlinuz,initrd.img}
# (BALLOON_GUEST_DIR overrides the place); idempotent.
set -e
cd "$(dirname "$0")/.."
OUT=${BALLOON_GUEST_DIR:-$PWD/tmp/balloon-guest}
if [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ]; then
    exit 0
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
KERNEL=$(apt-cache depends linux-image-cloud-amd64 |
         sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' |
         head -n 1)
apt-get download -q "$KERNEL" busybox-static >/dev/null 2>&1
dpkg -x linux-image-*.deb kernel
dpkg -x busybox-static_*.deb busybox
VERSION=$(ls kernel/lib/modules)
MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_balloon"
mkdir -p root/bin root/proc root/sys root/dev root/modules
cp busybox/bin/busybox root/bin/
for module in $MODULES; do
    cp "kernel/lib/modules/$VERSION/kernel/drivers/virtio/$module.ko" \
       root/modules/
done
cat > root/init <<INIT
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
for module in $MODULES; do
    /bin/busybox insmod /modules/\$module.ko
done
while true; do /bin/busybox sleep 3600; done
INIT
chmod 755 root/init
mkdir -p "$OUT"
(cd root && find . | "$WORK/busybox/bin/busybox" cpio -o -H newc 2>/dev/null |
    gzip -1 > "$OUT/initrd.img.new")
cp kernel/boot/vmlinuz-* "$OUT/vmlinuz.new"
mv "$OUT/initrd.img.new" "$OUT/initrd.img"
mv "$OUT/vmlinuz.new" "$OUT/vmlinuz"

#!/usr/bin/env bash
# kTLS for real: boots Debian's 6.1 kernel (CONFIG_TLS=m) under QEMU software
# emulation with an initramfs holding busybox, ztm-tlsprobe and ztm (the
# product: `ztm h2-test`) with the shared libraries they need (at the paths
# ldd names: liburing, libnghttp2, BoringSSL's android/ folder, and the
# sanitizer runtimes in a sanitizer build), the openssl CLI, the test certificates, and the kernel's TLS and
# crypto modules; guest-init.sh runs the cases and prints KTLSVM lines on the
# serial console. This script fails (never skips) when the VM cannot run,
# and says why.
#
# Usage: run-ktls-vm.sh PROBE ZTM CERTDIR WORKDIR
# Env:   ZTM_KTLS_KERNEL=/boot/vmlinuz-...   pick the kernel (default: the
#        newest /boot/vmlinuz-6.1.* whose modules include net/tls)
#        ZTM_KTLS_VM_TIMEOUT=seconds         (default 240)
#        ZTM_KTLS_CASES=a,b                  run only these guest cases
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
probe=${1:?usage: run-ktls-vm.sh PROBE ZTM CERTDIR WORKDIR}
ztm=${2:?usage}
certs=${3:?usage}
work=${4:?usage}
timeout_s=${ZTM_KTLS_VM_TIMEOUT:-240}

fail() {
  echo "KTLS-VM FAIL: $*"
  exit 1
}

qemu=$(command -v qemu-system-x86_64) ||
  fail "qemu-system-x86_64 not found (apt-get install qemu-system-x86)"
for tool in cpio gzip ldd openssl; do
  command -v $tool >/dev/null || fail "$tool not found"
done
busybox=/bin/busybox
[ -x $busybox ] || fail "$busybox not found (apt-get install busybox-static)"
ldd $busybox >/dev/null 2>&1 && fail "$busybox is not static (apt-get install busybox-static)"
[ -x "$probe" ] || fail "probe binary $probe not built"
[ -x "$ztm" ] || fail "ztm binary $ztm not built"
[ -r "$certs/ca.pem" ] || fail "no certificates in $certs (the tls_certs fixture makes them)"

kernel=${ZTM_KTLS_KERNEL:-}
if [ -z "$kernel" ]; then
  for k in $(ls -1 /boot/vmlinuz-6.1.* 2>/dev/null | sort -rV); do
    v=${k#/boot/vmlinuz-}
    if ls /lib/modules/"$v"/kernel/net/tls/tls.ko* >/dev/null 2>&1; then
      kernel=$k
      break
    fi
  done
fi
[ -n "$kernel" ] || fail "no /boot/vmlinuz-6.1.* with /lib/modules/<ver>/kernel/net/tls (apt-get install linux-image-amd64)"
[ -r "$kernel" ] || fail "kernel image $kernel is not readable"
kver=${kernel#/boot/vmlinuz-}
mods=/lib/modules/$kver
[ -d "$mods" ] || fail "no $mods for kernel $kernel"

# ---- the initramfs -----------------------------------------------------------
root=$work/root
rm -rf "$work"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,probe,certs,etc/ssl,usr/lib/ssl} "$root$mods/kernel" ||
  fail "cannot create $root"

# BIN and every shared library ldd names for it, at the same absolute paths.
copy_with_libs() {
  local bin=$1 dest=$2
  cp -L "$bin" "$root$dest" || fail "cannot copy $bin"
  local libs
  libs=$(ldd "$bin" | grep -o '/[^ ]*' | sort -u) || fail "ldd $bin failed"
  for lib in $libs; do
    [ -e "$root$lib" ] && continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib" || fail "cannot copy $lib (needed by $bin)"
  done
}

cp $busybox "$root/bin/busybox"
copy_with_libs "$probe" /probe/ztm-tlsprobe
copy_with_libs "$ztm" /probe/ztm
copy_with_libs "$(command -v openssl)" /bin/openssl
cp -L /etc/ssl/openssl.cnf "$root/etc/ssl/openssl.cnf" 2>/dev/null &&
  ln -s /etc/ssl/openssl.cnf "$root/usr/lib/ssl/openssl.cnf"
cp "$certs"/*.pem "$certs"/*.key "$root/certs/"
for d in net/tls crypto arch/x86/crypto lib/crypto; do
  mkdir -p "$root$mods/kernel/$(dirname $d)"
  cp -a "$mods/kernel/$d" "$root$mods/kernel/$d" || fail "cannot copy modules $mods/kernel/$d"
done
cp -a "$mods"/modules.* "$root$mods/"
cp "$here/guest-init.sh" "$root/init" && chmod +x "$root/init"

(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.gz" ||
  fail "cannot build the initramfs"
echo "ktls-vm: kernel $kernel, initramfs $(du -h "$work/initrd.gz" | cut -f1), probe $probe, ztm $ztm"

# ---- boot ------------------------------------------------------------------------
log=$work/serial.log
start=$(date +%s)
timeout --foreground "$timeout_s" "$qemu" -accel tcg -cpu max -m 1024 -smp 1 -nographic -nic none \
  -no-reboot -kernel "$kernel" -initrd "$work/initrd.gz" \
  -append "console=ttyS0 quiet panic=-1${ZTM_KTLS_CASES:+ ztm.cases=$ZTM_KTLS_CASES}" </dev/null >"$log" 2>&1
rc=$?
secs=$(($(date +%s) - start))
tr -d '\r' <"$log" | grep '^KTLSVM' | sed 's/^KTLSVM /ktls-vm: /'
echo "ktls-vm: VM ran ${secs}s (qemu exit $rc); serial log: $log"

result=$(tr -d '\r' <"$log" | grep '^KTLSVM RESULT' | tail -1)
case "$result" in
*"RESULT ok"*) exit 0 ;;
*"RESULT FAIL"*) fail "${result#KTLSVM }" ;;
esac
if [ $rc -eq 124 ]; then
  fail "the VM did not finish within ${timeout_s}s; last console lines:
$(tail -n 20 "$log")"
fi
fail "the VM printed no result (qemu exit $rc); last console lines:
$(tail -n 20 "$log")"

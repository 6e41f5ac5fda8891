#!/bin/busybox sh
# /init of the kTLS test VM (Debian's 6.1 kernel under QEMU; see
# run-ktls-vm.sh). Loads the kernel TLS modules, runs ztm-tlsprobe through
# the kernel path, checks /proc/net/tls_stat around every case, prints
# "KTLSVM ..." lines on the serial console and powers off.
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo /sbin/modprobe >/proc/sys/kernel/modprobe
ip link set lo up
init_at=$(cut -d' ' -f1 /proc/uptime)

say() { echo "KTLSVM $*"; }
for m in tls aesni_intel gcm ghash_clmulni_intel chacha20poly1305; do
  modprobe "$m" || say "modprobe $m failed"
done
say "boot init_at=$init_at modules_loaded_at=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r) cpu=\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')\" modules=\"$(cut -d' ' -f1 /proc/modules | tr '\n' ' ')\""
if [ ! -r /proc/net/tls_stat ]; then
  say "RESULT FAIL reason=\"no /proc/net/tls_stat: the tls module did not load\""
  poweroff -f
fi

P=/probe/ztm-tlsprobe
C=/certs
export ZTM_LOG_LEVEL=info
pass=0
fail=0
failed=""

tlsstat() { awk -v k="$1" '$1 == k { print $2 }' /proc/net/tls_stat; }

# expect FILE REGEX: the file has a line matching REGEX
expect() {
  if grep -Eq "$2" "$1"; then return 0; fi
  say "  missing in $(basename "$1"): $2"
  return 1
}

# kernel_sides N: this case put N sockets' TX and RX into the kernel, and
# nothing failed to decrypt
kernel_sides() {
  tx=$(($(tlsstat TlsTxSw) - tx0))
  rx=$(($(tlsstat TlsRxSw) - rx0))
  de=$(($(tlsstat TlsDecryptError) - de0))
  say "  tls_stat TlsTxSw+$tx TlsRxSw+$rx TlsDecryptError+$de"
  [ "$tx" -eq "$1" ] && [ "$rx" -eq "$1" ] && [ "$de" -eq 0 ]
}

run() {
  name=$1
  O=/tmp/$name.out
  E=/tmp/$name.err
  tx0=$(tlsstat TlsTxSw)
  rx0=$(tlsstat TlsRxSw)
  de0=$(tlsstat TlsDecryptError)
  t0=$(date +%s)
  if "t_$name"; then r=ok; pass=$((pass + 1)); else r=FAIL; fail=$((fail + 1)); failed="$failed $name"; fi
  t1=$(date +%s)
  grep -h '^tlsprobe\|^RESULT\|^sha256' "$O" 2>/dev/null | sed 's/^/KTLSVM   /'
  if [ $r = FAIL ]; then
    tail -n 15 "$E" 2>/dev/null | sed 's/^/KTLSVM   stderr: /'
  fi
  say "case=$name result=$r seconds=$((t1 - t0))"
}

KT="ktls_tx=1 ktls_rx=1"
UT="ktls_tx=0 ktls_rx=0"

# (a) kernel both sides, 16 MiB each way, per cipher
t_aes128_gcm() {
  $P pair --certs $C --bytes 16M --ktls on >$O 2>$E
  expect $O "side=server cipher=TLS_AES_128_GCM_SHA256 .*$KT .*recv=16777216 .*recv_exact=1 close=close_notify .*result=ok" &&
    expect $O "side=client cipher=TLS_AES_128_GCM_SHA256 .*$KT .*recv=16777216 .*recv_exact=1 close=close_notify .*result=ok" &&
    expect $O "^RESULT ok" && kernel_sides 2
}

t_chacha20_poly1305() {
  $P pair --certs $C --bytes 16M --ktls on --client-noaes >$O 2>$E
  expect $O "side=server cipher=TLS_CHACHA20_POLY1305_SHA256 .*$KT .*recv_exact=1 close=close_notify .*result=ok" &&
    expect $O "side=client cipher=TLS_CHACHA20_POLY1305_SHA256 .*$KT .*recv_exact=1 close=close_notify .*result=ok" &&
    expect $O "^RESULT ok" && kernel_sides 2
}

# BoringSSL always offers AES-128-GCM before AES-256-GCM and this build has
# no API to change that, so AES-256-GCM is negotiated with OpenSSL peers
# (user space): our server in the kernel, then our client in the kernel.
# wait_file F: until F exists (at most 10 s)
wait_file() {
  i=0
  while [ ! -s "$1" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
}

t_aes256_gcm_server() {
  $P gen client 16M >/tmp/in.bin
  rm -f /tmp/port
  $P server --certs $C --listen 127.0.0.1:0 --port-file /tmp/port --ktls on --echo --bytes 0 \
    --expect 16M --expect-close any >$O 2>$E &
  wait_file /tmp/port
  openssl s_client -quiet -connect 127.0.0.1:$(cat /tmp/port) -alpn h2 \
    -ciphersuites TLS_AES_256_GCM_SHA384 -CAfile $C/ca.pem -cert $C/client.pem -key $C/client.key \
    </tmp/in.bin 2>/tmp/s_client.err | $P sha256 | sed 's/^/sha256 echoed=/' >>$O
  wait
  $P sha256 </tmp/in.bin | sed 's/^/sha256 input=/' >>$O
  rm -f /tmp/in.bin
  a=$(sed -n 's/^sha256 input=//p' $O)
  expect $O "side=server cipher=TLS_AES_256_GCM_SHA384 .*$KT sent=16777216 recv=16777216 sent_sha256=$a recv_sha256=$a .*result=ok" &&
    expect $O "^sha256 echoed=$a" && kernel_sides 1
}

t_aes256_gcm_client() {
  $P gen server 4M >/tmp/in.bin
  (cat /tmp/in.bin; sleep 30) | openssl s_server -quiet -naccept 1 -accept 4434 \
    -cert $C/server.pem -key $C/server.key -CAfile $C/ca.pem -Verify 2 -verify_return_error \
    -ciphersuites TLS_AES_256_GCM_SHA384 -alpn h2 >/tmp/s_server.out 2>/tmp/s_server.err &
  spid=$!
  i=0
  while ! cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -q ':1152 ' && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  ZTM_LOG_LEVEL=debug $P client --certs $C --connect 127.0.0.1:4434 --ktls on --bytes 4M \
    --expect 4M --close-after-recv --expect-close any >$O 2>$E
  i=0
  while [ -d /proc/$spid ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  $P sha256 </tmp/s_server.out | sed 's/^/sha256 s_server_got=/' >>$O
  rm -f /tmp/in.bin /tmp/s_server.out
  s=$(sed -n 's/.*side=client .*sent_sha256=\([0-9a-f]*\).*/\1/p' $O)
  # OpenSSL sends two NewSessionTickets: the kernel hands them over as
  # handshake records, which are skipped.
  expect $O "side=client cipher=TLS_AES_256_GCM_SHA384 .*$KT sent=4194304 recv=4194304 .*recv_exact=1 .*result=ok" &&
    expect $O "^sha256 s_server_got=$s" &&
    expect $E "event=tls.ktls_control role=client type=22 hs_type=4 action=ignored" &&
    kernel_sides 1
}

# (b) mixed pairs: kernel on one side, BoringSSL on the other
t_mixed_server_kernel() {
  $P pair --certs $C --bytes 4M --server-ktls on --client-ktls off >$O 2>$E
  expect $O "side=server .*$KT .*recv_exact=1 close=close_notify .*result=ok" &&
    expect $O "side=client .*ktls_mode=off $UT .*recv_exact=1 close=close_notify .*result=ok" &&
    expect $O "^RESULT ok" && kernel_sides 1
}

t_mixed_client_kernel() {
  $P pair --certs $C --bytes 4M --server-ktls off --client-ktls on >$O 2>$E
  expect $O "side=server .*ktls_mode=off $UT .*recv_exact=1 close=close_notify .*result=ok" &&
    expect $O "side=client .*$KT .*recv_exact=1 close=close_notify .*result=ok" &&
    expect $O "^RESULT ok" && kernel_sides 1
}

# (c) close_notify alone: sent with TLS_SET_RECORD_TYPE 21, received as a
# control record, on both sides
t_close_notify() {
  $P pair --certs $C --bytes 0 --ktls on >$O 2>$E
  expect $O "side=server .*$KT sent=0 recv=0 .*close=close_notify .*result=ok" &&
    expect $O "side=client .*$KT sent=0 recv=0 .*close=close_notify .*result=ok" &&
    expect $O "^RESULT ok" && kernel_sides 2
}

# (d) a user-space peer sends KeyUpdate; this kernel cannot follow: the kTLS
# side stops with rekey_needed, sends close_notify, and the peer sees a
# clean close
t_key_update() {
  $P pair --certs $C --bytes 4M --server-ktls on --client-ktls off --client-key-update-at 1M \
    --server-expect-close rekey_needed --client-expect-close peer_closed_early >$O 2>$E
  expect $O "side=server .*$KT .*close=rekey_needed .*result=ok" &&
    expect $O "side=client .*$UT .*close=peer_closed_early .*result=ok" &&
    expect $E "event=tls.ktls_rekey_needed role=server" && kernel_sides 1
}

# (e) the AES-GCM record limit (set very low): the kTLS sender stops, closes
t_record_limit() {
  $P pair --certs $C --bytes 4M --ktls on --server-record-limit 64 \
    --server-expect-close record_limit --client-expect-close peer_closed_early >$O 2>$E
  expect $O "side=server .*$KT .*close=record_limit .*result=ok" &&
    expect $O "side=client .*$KT .*close=peer_closed_early .*result=ok" &&
    expect $E "event=tls.record_limit role=server records=[0-9]+ limit=64" && kernel_sides 2
}

ALL="aes128_gcm chacha20_poly1305 aes256_gcm_server aes256_gcm_client mixed_server_kernel
  mixed_client_kernel close_notify key_update record_limit"
# ztm.cases=a,b on the kernel command line runs only those (for debugging)
only=$(sed -n 's/.*ztm\.cases=\([^ ]*\).*/\1/p' /proc/cmdline | tr , ' ')
T0=$(date +%s)
for t in ${only:-$ALL}; do
  run $t
done
tr '\n' ' ' </proc/net/tls_stat | sed 's/  */ /g; s/^/KTLSVM tls_stat /'
echo
if [ $fail -eq 0 ]; then
  say "RESULT ok passed=$pass seconds=$(($(date +%s) - T0))"
else
  say "RESULT FAIL passed=$pass failed=$fail cases=\"${failed# }\""
fi
poweroff -f

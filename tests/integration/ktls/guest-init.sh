#!/bin/busybox sh
# /init of the kTLS test VM (Debian's 6.1 kernel under QEMU; see
# run-ktls-vm.sh). Loads the kernel TLS modules, runs ztm-tlsprobe and the
# product itself (`ztm h2-test` server and client: io_uring link layer,
# HTTP/2) through the kernel path, checks /proc/net/tls_stat around every
# case, prints "KTLSVM ..." lines on the serial console and powers off.
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
# tcpext NAME: a TcpExt counter from /proc/net/netstat
tcpext() {
  awk -v k="$1" '$1 == "TcpExt:" { if (!h) { for (i = 2; i <= NF; i++) n[i] = $i; h = 1 }
    else for (i = 2; i <= NF; i++) if (n[i] == k) print $i }' /proc/net/netstat
}

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

SANITIZER_RE='runtime error:|(Address|Leak|UndefinedBehavior|Thread)Sanitizer'
run() {
  name=$1
  O=/tmp/$name.out
  E=/tmp/$name.err
  tx0=$(tlsstat TlsTxSw)
  rx0=$(tlsstat TlsRxSw)
  de0=$(tlsstat TlsDecryptError)
  rm -f /tmp/$name.*
  t0=$(date +%s)
  if "t_$name"; then r=ok; else r=FAIL; fi
  t1=$(date +%s)
  grep -h '^tlsprobe\|^RESULT\|^sha256\|^h2case' "$O" 2>/dev/null | sed 's/^/KTLSVM   /'
  # a sanitizer build (ZTM_SANITIZE) reports on stderr: any report fails the case
  if grep -Eqs "$SANITIZER_RE" "$E" /tmp/$name.*.log; then
    grep -Ehs "$SANITIZER_RE" "$E" /tmp/$name.*.log | head -n 5 | sed 's/^/KTLSVM   sanitizer: /'
    r=FAIL
  fi
  if [ $r = ok ]; then pass=$((pass + 1)); else fail=$((fail + 1)); failed="$failed $name"; fi
  if [ $r = FAIL ]; then
    tail -n 15 "$E" 2>/dev/null | sed 's/^/KTLSVM   stderr: /'
    for f in /tmp/$name.server.log /tmp/$name.client*.log; do
      [ -r "$f" ] && tail -n 8 "$f" | sed "s|^|KTLSVM   $(basename "$f" .log): |"
    done
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
# clean close. The client has 16 MiB to send, more than the loopback socket
# buffers hold: with only 4 MiB it could, about one run in ten, have every
# byte queued and the server's 4 MiB read before the server reached the
# KeyUpdate, and then end with close_notify instead of peer_closed_early.
t_key_update() {
  $P pair --certs $C --bytes 4M --client-bytes 16M --server-ktls on --client-ktls off --client-key-update-at 1M \
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

# ---- the product: `ztm h2-test` (io_uring link layer + nghttp2) ----------------
# One server per case (log in /tmp/NAME.server.log), clients run one after
# the other against it; every client checks every byte it gets back. At the
# end of the case the server gets SIGTERM and must exit 0.
Z=/probe/ztm
ZS="--cert $C/server.pem --key $C/server.key --ca $C/ca.pem"
ZC="--cert $C/client.pem --key $C/client.key --ca $C/ca.pem --sni localhost"
MiB=1048576

# h2_server MODE [ARGS...]: starts the server, sets spid, port, SL and nconn
h2_server() {
  SL=/tmp/$name.server.log
  nconn=0
  echo "h2case server --ktls $*" >>$O
  $Z h2-test server --listen 127.0.0.1:0 --workers 1 $ZS --ktls "$@" >/dev/null 2>$SL &
  spid=$!
  i=0
  while ! grep -q 'event=h2test.listen' $SL && [ -d /proc/$spid ] && [ $i -lt 100 ]; do
    sleep 0.1
    i=$((i + 1))
  done
  port=$(sed -n 's/.*event=h2test.listen addr=[0-9.]*:\([0-9]*\) .*/\1/p' $SL | head -1)
  [ -n "$port" ] && return 0
  say "  the h2-test server did not start"
  return 1
}

# running PID: true while PID has not exited (zombies count as exited)
running() {
  [ -r /proc/$1/stat ] && [ "$(cut -d' ' -f3 /proc/$1/stat 2>/dev/null)" != Z ]
}

# h2_client MODE KERNEL_SOCKETS EXPECT_LAYER ARGS...: one client run against
# the server: exit 0 with an "ok" line naming EXPECT_LAYER, both ends'
# tls.established with the right record layer, KERNEL_SOCKETS sockets'
# TX and RX put into the kernel, nothing failing to decrypt; then the
# server's link.close for this connection with a reason matching CLOSE_OK,
# and no TCP reset at the end: TcpExt TCPAbortOnClose (closed with unread
# input) and TCPAbortOnData (bytes arrived after close, or SO_LINGER 0)
# unchanged, since both ends close gracefully.
h2_client() {
  cmode=$1 ksock=$2 clayer=$3
  shift 3
  nconn=$((nconn + 1))
  CL=/tmp/$name.client$nconn.log
  htx0=$(tlsstat TlsTxSw) hrx0=$(tlsstat TlsRxSw) hde0=$(tlsstat TlsDecryptError)
  aoc0=$(tcpext TCPAbortOnClose) aod0=$(tcpext TCPAbortOnData)
  ct0=$(cut -d' ' -f1 /proc/uptime)
  $Z h2-test client --connect 127.0.0.1:$port $ZC --ktls "$cmode" --timeout 60 "$@" >/tmp/client.out 2>$CL
  crc=$?
  ct1=$(cut -d' ' -f1 /proc/uptime)
  sed "s/^/h2case client$nconn --ktls $cmode $* exit=$crc secs=$(awk "BEGIN{print $ct1-$ct0}"): /" /tmp/client.out >>$O
  # the server's side of this connection: its link.close, at most 10 s
  i=0
  while [ "$(grep -c 'event=link.close' $SL)" -lt $nconn ] && [ $i -lt 100 ]; do
    sleep 0.1
    i=$((i + 1))
  done
  htx=$(($(tlsstat TlsTxSw) - htx0)) hrx=$(($(tlsstat TlsRxSw) - hrx0)) hde=$(($(tlsstat TlsDecryptError) - hde0))
  sleep 0.2 # let a reset, if any, land
  aoc=$(($(tcpext TCPAbortOnClose) - aoc0)) aod=$(($(tcpext TCPAbortOnData) - aod0))
  echo "h2case client$nconn tls_stat TlsTxSw+$htx TlsRxSw+$hrx TlsDecryptError+$hde; TcpExt TCPAbortOnClose+$aoc TCPAbortOnData+$aod" >>$O
  slayer=user
  [ "$SMODE" != off ] && slayer=kernel
  [ "$cmode" = off ] && clayer_log=user || clayer_log=kernel
  sest=$(grep 'event=tls.established' $SL | sed -n "${nconn}p")
  sclose=$(grep 'event=link.close' $SL | sed -n "${nconn}p")
  echo "h2case client$nconn server: ${sest#*event=}" >>$O
  echo "h2case client$nconn server: ${sclose#*event=}" >>$O
  grep 'event=link.close' $CL | sed "s/^.*event=/h2case client$nconn client: /" >>$O
  ok=1
  [ $crc -eq 0 ] || { say "  client$nconn exited $crc"; ok=0; }
  expect /tmp/client.out "^ok requests=[0-9]+ .* record_layer=$clayer sha256=[0-9a-f]{64}$" || ok=0
  expect $CL "event=tls.established role=client .* record_layer=$clayer_log " || ok=0
  case "$sest" in
  *"role=server "*"record_layer=$slayer "*) ;;
  *) say "  server: connection $nconn not established with record_layer=$slayer"; ok=0 ;;
  esac
  if ! echo "$sclose" | grep -Eq "$CLOSE_OK"; then
    say "  server: connection $nconn did not end with $CLOSE_OK: ${sclose:-no link.close within 10 s}"
    ok=0
  fi
  if [ "$aoc" -ne 0 ] || [ "$aod" -ne 0 ]; then
    say "  connection $nconn ended with a TCP reset: TCPAbortOnClose+$aoc TCPAbortOnData+$aod"
    ok=0
  fi
  if [ "$htx" -ne "$ksock" ] || [ "$hrx" -ne "$ksock" ] || [ "$hde" -ne 0 ]; then
    say "  tls_stat: expected TlsTxSw+$ksock TlsRxSw+$ksock TlsDecryptError+0"
    ok=0
  fi
  if grep -Eq 'level=(error|warn)' $CL; then
    grep -E 'level=(error|warn)' $CL | head -5 | sed 's/^/KTLSVM   client log: /'
    ok=0
  fi
  [ $ok -eq 1 ]
}

# h2_stop: SIGTERM to the server, which must exit 0 within 15 s with no
# warning or error logged and every kTLS socket released
h2_stop() {
  kill -TERM $spid
  i=0
  while running $spid && [ $i -lt 150 ]; do
    sleep 0.1
    i=$((i + 1))
  done
  if running $spid; then
    say "  server still running 15 s after SIGTERM"
    kill -KILL $spid
    wait $spid
    return 1
  fi
  wait $spid
  src=$?
  echo "h2case server exit=$src after SIGTERM, $nconn connections" >>$O
  ok=1
  [ $src -eq 0 ] || { say "  server exited $src after SIGTERM"; ok=0; }
  if grep -Eq 'level=(error|warn)' $SL; then
    grep -E 'level=(error|warn)' $SL | head -5 | sed 's/^/KTLSVM   server log: /'
    ok=0
  fi
  ctx=$(tlsstat TlsCurrTxSw) crx=$(tlsstat TlsCurrRxSw)
  if [ "$ctx" -ne 0 ] || [ "$crx" -ne 0 ]; then
    say "  kTLS sockets left open: TlsCurrTxSw=$ctx TlsCurrRxSw=$crx"
    ok=0
  fi
  [ $ok -eq 1 ]
}

# h2_case SMODE CMODE KSOCK CLAYER GET_REQS GET_SIZE POST_REQS POST_SIZE
h2_case() {
  SMODE=$1
  CLOSE_OK='reason="(done|peer_closed)"' # clean; the close itself is case (h)
  h2_server "$1" || return 1
  r=0
  h2_client "$2" "$3" "$4" --requests "$5" --streams 4 --get-size "$6" || r=1
  h2_client "$2" "$3" "$4" --requests "$7" --streams 4 --post-size "$8" || r=1
  h2_stop || r=1
  return $r
}

# (f) both ends in the kernel: GET 16 MiB and POST-echo 16 MiB (16 MiB each way)
t_h2_kernel() { h2_case on on 2 kernel 16 $MiB 16 $MiB; }
# (g) mixed: kernel on one end, BoringSSL on the other
t_h2_mixed_server_kernel() { h2_case on off 1 user 8 524288 8 524288; }
t_h2_mixed_client_kernel() { h2_case off on 1 kernel 8 524288 8 524288; }
# (h) the graceful end. The client, done, sends GOAWAY, then close_notify (a
# TLS alert record) and FIN: under kTLS the server's RECV fails with EIO at
# that record, the link re-reads it with RECVMSG and must close with reason
# peer_closed (not "truncated..." or an error). Then a peer that sends
# close_notify while the server's HTTP/2 session is still open (ztm-tlsprobe,
# kTLS too): the same, and the server must answer with its own close_notify.
# Finally SIGTERM: exit 0.
t_h2_graceful_close() {
  SMODE=on
  CLOSE_OK='reason="peer_closed"'
  h2_server on --log-level debug || return 1
  r=0
  h2_client on 2 kernel --requests 4 --streams 2 --get-size 65536 || r=1
  nconn=$((nconn + 1))
  $P client --certs $C --connect 127.0.0.1:$port --ktls on --bytes 0 --expect-close close_notify \
    >/tmp/probe.out 2>>$E
  sed "s/^/h2case probe (exit $?): /" /tmp/probe.out >>$O
  i=0
  while [ "$(grep -c 'event=link.close' $SL)" -lt $nconn ] && [ $i -lt 100 ]; do
    sleep 0.1
    i=$((i + 1))
  done
  sclose=$(grep 'event=link.close' $SL | sed -n "${nconn}p")
  echo "h2case probe server: ${sclose#*event=}" >>$O
  expect /tmp/probe.out "side=client .* ktls_tx=1 ktls_rx=1 sent=0 .* close=close_notify " || r=1
  if ! echo "$sclose" | grep -Eq "$CLOSE_OK"; then
    say "  server: the probe's connection did not end with $CLOSE_OK: ${sclose:-no link.close within 10 s}"
    r=1
  fi
  h2_stop || r=1
  return $r
}

# (i) --ktls auto on both ends on a kernel that has it: the kernel is chosen
t_h2_auto() { h2_case auto auto 2 kernel 16 $MiB 16 $MiB; }

ALL="aes128_gcm chacha20_poly1305 aes256_gcm_server aes256_gcm_client mixed_server_kernel
  mixed_client_kernel close_notify key_update record_limit
  h2_kernel h2_mixed_server_kernel h2_mixed_client_kernel h2_graceful_close h2_auto"
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

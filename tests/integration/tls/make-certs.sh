#!/usr/bin/env bash
# Test PKI for the TLS tests, EC P-256, made with the openssl CLI:
#   ca.pem                   the mesh CA (trusted by both sides)
#   server.pem/.key          EKU serverAuth, SAN localhost + 127.0.0.1
#   client.pem/.key          EKU clientAuth
#   expired-{server,client}      valid 2020-01-01 .. 2021-01-01
#   notyet-{server,client}       valid 2040-01-01 .. 2041-01-01
#   foreign-{server,client}      issued by another CA (foreign-ca.pem)
#   wrongeku-{server,client}     server cert with clientAuth only, and the reverse
# Usage: make-certs.sh OUTDIR   (idempotent: does nothing if OUTDIR/.done exists)
set -euo pipefail
out=${1:?usage: make-certs.sh OUTDIR}
[ -e "$out/.done" ] && exit 0
rm -rf "$out"
mkdir -p "$out"
cd "$out"
export CA_NAME=ca

cat > ca.cnf <<'CNF'
[ ca ]
default_ca = ca_default
[ ca_default ]
dir = .
database = $dir/index-$ENV::CA_NAME.txt
serial = $dir/serial-$ENV::CA_NAME
new_certs_dir = $dir/newcerts
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
[ policy_any ]
commonName = supplied
organizationName = optional
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = unused
[ v3_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ server ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, DNS:server.ztm.test, IP:127.0.0.1
authorityKeyIdentifier = keyid
[ client ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = DNS:client.ztm.test
authorityKeyIdentifier = keyid
CNF
mkdir -p newcerts

mkca() { # name subject
  touch "index-$1.txt"
  openssl ecparam -name prime256v1 -genkey -noout -out "$1.key" 2>/dev/null
  openssl req -new -x509 -config ca.cnf -extensions v3_ca -key "$1.key" -subj "/O=ztm-test/CN=$2" \
    -days 3650 -set_serial "0x$(openssl rand -hex 8)" -out "$1.pem"
  openssl rand -hex 8 > "serial-$1"
}

leaf() { # ca name extensions CN [startdate enddate]
  local ca=$1 name=$2 ext=$3 cn=$4
  openssl ecparam -name prime256v1 -genkey -noout -out "$name.key" 2>/dev/null
  openssl req -new -config ca.cnf -key "$name.key" -subj "/O=ztm-test/CN=$cn" -out "$name.csr"
  local dates=(-days 825)
  [ $# -ge 6 ] && dates=(-startdate "$5" -enddate "$6")
  CA_NAME=$ca openssl ca -batch -notext -config ca.cnf -name ca_default -cert "$ca.pem" \
    -keyfile "$ca.key" -extensions "$ext" "${dates[@]}" -in "$name.csr" -out "$name.pem" 2>/dev/null
  rm -f "$name.csr"
}

mkca ca "ztm test CA"
mkca foreign-ca "foreign CA"
leaf ca server server "server.ztm.test"
leaf ca client client "client.ztm.test"
leaf ca expired-server server "expired-server" 20200101000000Z 20210101000000Z
leaf ca expired-client client "expired-client" 20200101000000Z 20210101000000Z
leaf ca notyet-server server "notyet-server" 20400101000000Z 20410101000000Z
leaf ca notyet-client client "notyet-client" 20400101000000Z 20410101000000Z
leaf foreign-ca foreign-server server "foreign-server"
leaf foreign-ca foreign-client client "foreign-client"
leaf ca wrongeku-server client "wrongeku-server"
leaf ca wrongeku-client server "wrongeku-client"
rm -rf newcerts index-* serial-*
touch .done

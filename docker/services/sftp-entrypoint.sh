#!/bin/bash
# Entrypoint of the pero-sftp image: accounts from /etc/sftp/users.conf, then sshd in the foreground.
# Each line is USER:PASSWORD:e:UID (the atmoz/sftp format; ':e' = PASSWORD is a crypt hash, the only form
# accepted here: no plain password ever sits in a file).  Each user may only use SFTP, jailed in /home/USER.
set -euo pipefail
USERS=/etc/sftp/users.conf
KEY=/etc/ssh/ssh_host_ed25519_key
[[ -r "$USERS" ]] || { echo "sftp-entrypoint: $USERS not found (mount it)" >&2; exit 2; }
[[ -r "$KEY" ]] || { echo "sftp-entrypoint: $KEY not found (mount the host key)" >&2; exit 2; }

names=()
while IFS=: read -r user hash encrypted uid _rest; do
    [[ -z "$user" || "$user" == \#* ]] && continue
    if [[ "$encrypted" != e || "$hash" != \$* ]]; then
        echo "sftp-entrypoint: $USERS: $user: only crypt hashes (USER:HASH:e:UID) are accepted" >&2
        exit 2
    fi
    if ! id "$user" >/dev/null 2>&1; then
        useradd --no-create-home --home-dir "/home/$user" --shell /usr/sbin/nologin ${uid:+--uid "$uid"} "$user"
    fi
    usermod -p "$hash" "$user"
    # The jail: root-owned and not writable by the user (sshd's rule); the mounted folders inside are its own.
    mkdir -p "/home/$user"
    chown root:root "/home/$user"
    chmod 755 "/home/$user"
    names+=("$user")
done < "$USERS"
[[ ${#names[@]} -gt 0 ]] || { echo "sftp-entrypoint: no user in $USERS" >&2; exit 2; }

cat > /etc/ssh/sshd_config <<CONFIG
Port 22
HostKey $KEY
AllowUsers ${names[*]}
PermitRootLogin no
PasswordAuthentication yes
PermitEmptyPasswords no
KbdInteractiveAuthentication no
PubkeyAuthentication no
UsePAM no
LoginGraceTime 30
MaxAuthTries 3
AllowTcpForwarding no
AllowStreamLocalForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTunnel no
PermitTTY no
PrintMotd no
Subsystem sftp internal-sftp
ChrootDirectory %h
ForceCommand internal-sftp -d /
CONFIG
exec /usr/sbin/sshd -D -e

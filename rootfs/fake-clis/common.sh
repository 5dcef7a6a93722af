# Shared by the fake `claude`, `codex` and `gemini` of the test image (busybox sh). Each replays a
# real CLI's recorded login (tests/fixtures/cli, copied to /usr/share/fake-cli) through fake-cli,
# which then waits for the pasted code (a line on its terminal) and writes the provider's credential
# file where the real CLI would (temp file + rename, mode 0600): where the provider rules
# (protocol/src/providers.toml) put it for this HOME and environment, the one place that says so.

FAKE_CLI=/usr/lib/fake-cli/fake-cli
FAKE_CLI_FIXTURES=/usr/share/fake-cli

# The recording whose width fits the terminal: 100x30 from 100 columns on, else 80x24.
fake_cli_size() {
    cols=$(stty size 2>/dev/null | cut -d' ' -f2)
    if [ "${cols:-80}" -ge 100 ] 2>/dev/null; then echo 100x30; else echo 80x24; fi
}

# fake_cli_login PROVIDER CASE: replaces this shell with the replay of CASE.
# FAKE_CLI_CASE overrides the case (e.g. `tui` for codex), FAKE_CLI_ARGS adds fake-cli options
# (e.g. `--chunks bytes`).
fake_cli_login() {
    # shellcheck disable=SC2086 # FAKE_CLI_ARGS is a list of words
    exec "$FAKE_CLI" "$FAKE_CLI_FIXTURES/$1/${FAKE_CLI_CASE:-$2}-$(fake_cli_size)" --provider "$1" $FAKE_CLI_ARGS
}

# fake_cli_status PROVIDER: "Logged in" (exit 0) when the provider's credential file is a complete
# login by the rules, "Not logged in" (exit 1) otherwise.
fake_cli_status() {
    exec "$FAKE_CLI" --status "$1"
}

fake_cli_unsupported() {
    echo "fake $1: only the login (and its status) is recorded; got: $*" >&2
    exit 2
}

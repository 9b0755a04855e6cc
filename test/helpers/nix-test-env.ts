// Loaded before every test file (`node --import`, see package.json): the suite's derivations have
// no nixpkgs and run /bin/sh and coreutils by absolute path, which Nix's sandbox (on wherever root
// has build users, node/nix/nix-config.ts) hides. Exposing them is the suite's need, not the
// machine's, so it goes into the environment of the tests and what they start, never into
// /etc/nix/nix.conf.
const SANDBOX_PATHS = 'extra-sandbox-paths = /bin /usr /lib /lib64'
const inherited = process.env.NIX_CONFIG ?? ''
if (!inherited.includes(SANDBOX_PATHS)) process.env.NIX_CONFIG = inherited === '' ? SANDBOX_PATHS : `${inherited}\n${SANDBOX_PATHS}`

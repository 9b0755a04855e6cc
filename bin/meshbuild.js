#!/usr/bin/env node
// Entry point: checks the Node version, then loads start.js. An older Node fails inside the imports
// (missing node:zlib exports, type stripping), so the check comes first, in syntax that old Nodes
// parse as ESM or as CommonJS (no static import, no import.meta, no top-level await, no
// let/const/arrows), and says in one line what is needed. The exit code is the usage one (2,
// node/cli/exit-codes.ts): the command cannot run as called, and systemd's unit does not restart it.
var NEEDED_MAJOR = 22
var NEEDED_MINOR = 18
var found = process.versions.node.split('.')
var major = Number(found[0])
var minor = Number(found[1])
if (major < NEEDED_MAJOR || (major === NEEDED_MAJOR && minor < NEEDED_MINOR)) {
  process.stderr.write('meshbuild: needs Node.js >= ' + NEEDED_MAJOR + '.' + NEEDED_MINOR + ', but found ' +
    process.version + ' (' + process.execPath + '); install Node.js ' + NEEDED_MAJOR + '.' + NEEDED_MINOR +
    ' or later (https://nodejs.org/en/download or your distribution) and put its node first on PATH\n')
  process.exitCode = 2
} else {
  import('./start.js')
}

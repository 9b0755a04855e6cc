// Keeps test/unit pure (docs/testing.md, "Layers"): no unit test imports a Nix, test-host or
// network helper, a module that runs Nix or opens sockets, or a socket API, and none names a Nix
// tool to run. Tests that need those live in test/nix/, test/integration/ or test/e2e/.
// (Checked over direct imports; a module imported for its pure parts may import exec.ts itself.)
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..')
const UNIT = 'test/unit'

/** Modules (relative to the root) a unit test may not load: they run Nix, need root, or open sockets. */
const IMPURE_MODULES = new Set([
  'test/helpers/nix.ts', 'test/helpers/test-hosts.ts', 'test/helpers/mesh-hosts.ts', 'test/helpers/loopback-mesh.ts',
  'node/nix/exec.ts', 'node/nix/cli-store.ts', 'node/mesh/network.ts', 'node/mesh/mesh-node.ts'
])
/** Packages and built-ins that open sockets or run programs on the network. */
const IMPURE_PACKAGE = /^(node:)?(net|http|https|http2|dgram|tls|dns)$|^libp2p$|^@libp2p\/(?!interface$)|^@chainsafe\//
/** Nix's own programs, as a test would name them to run them. */
const NIX_TOOL = /['"`](nix-store|nix-instantiate|nix-build|nix-env|nix-daemon|nix)['"`]/

interface Violation { file: string, what: string }

/** The violations of one unit test file's text. */
export function violations (file: string, text: string): Violation[] {
  const out: Violation[] = []
  const code = text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '')
  const imports = /^\s*(?:import|export)\s+(type\s+)?(?:[^'";]*?\bfrom\s+)?['"]([^'"]+)['"]|\bimport\(\s*['"]([^'"]+)['"]\s*\)/gm
  for (const m of code.matchAll(imports)) {
    if (m[1] !== undefined) continue // `import type` is erased: it loads nothing
    const spec = m[2] ?? m[3] ?? ''
    if (spec.startsWith('.')) {
      const target = relative(ROOT, resolve(ROOT, dirname(file), spec))
      if (IMPURE_MODULES.has(target)) out.push({ file, what: `imports ${target}` })
    } else if (IMPURE_PACKAGE.test(spec)) {
      out.push({ file, what: `imports ${spec}` })
    }
  }
  const tool = NIX_TOOL.exec(code)
  if (tool !== null) out.push({ file, what: `names the Nix tool ${tool[1] ?? ''}` })
  return out
}

describe('test/unit stays pure', () => {
  it('no unit test loads Nix, test hosts or sockets', () => {
    // This file is left out: its samples below name what they forbid.
    const self = relative(ROOT, fileURLToPath(import.meta.url))
    const files = readdirSync(join(ROOT, UNIT), { recursive: true, encoding: 'utf8' }).filter(f => f.endsWith('.ts')).map(f => join(UNIT, f)).filter(f => f !== self)
    assert.ok(files.length > 10, `only ${files.length} unit test files found`)
    const found = files.flatMap(f => violations(f, readFileSync(join(ROOT, f), 'utf8')))
    assert.deepEqual(found, [], found.map(v => `${v.file} ${v.what}`).join('\n'))
  })

  it('would catch each kind of violation', () => {
    const f = `${UNIT}/example.test.ts`
    const cases: Array<[string, string]> = [
      ["import { instantiate } from '../helpers/nix.ts'", 'imports test/helpers/nix.ts'],
      ["import { exec } from '../../node/nix/exec.ts'", 'imports node/nix/exec.ts'],
      ["import { createServer } from 'node:net'", 'imports node:net'],
      ["import { tcp } from '@libp2p/tcp'", 'imports @libp2p/tcp'],
      ["const m = await import('../helpers/test-hosts.ts')", 'imports test/helpers/test-hosts.ts'],
      ["await run('nix-store', ['--dump', p])", 'names the Nix tool nix-store']
    ]
    for (const [text, what] of cases) assert.deepEqual(violations(f, text), [{ file: f, what }], text)
    // And lets pass what is pure.
    for (const text of [
      "import type { Stream } from '@libp2p/interface'",
      "import { tempDir } from '../helpers/temp-dir.ts'",
      "import { Scheduler } from '../../node/scheduler/scheduler.ts'",
      "const p = '/nix/store/abc-x'; const magic = 'nix-archive-1'"
    ]) assert.deepEqual(violations(f, text), [], text)
  })

  it('flags the Nix tests, which is why they live in test/nix', () => {
    const dir = 'test/nix'
    const files = readdirSync(join(ROOT, dir)).filter(f => f.endsWith('.test.ts'))
    const flagged = files.filter(f => violations(join(dir, f), readFileSync(join(ROOT, dir, f), 'utf8')).length > 0)
    assert.deepEqual(flagged, files)
  })
})

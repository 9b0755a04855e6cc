// The layers of docs/architecture.md, checked over the import graph of node/ and protocols/:
// a violation fails `npm test` naming the file and the import. Pure: reads source files only.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..')

interface Import {
  /** The file that imports, relative to the repository root. */
  file: string
  /** The specifier as written. */
  spec: string
  /** Resolved path relative to the root for a relative import, else the package name. */
  target: string
  typeOnly: boolean
}

/** Packages protocols/ may use: small, pure, no I/O of their own (decisions.md, "Layers"). */
const PROTOCOL_PACKAGES = new Set(['@noble/ed25519', 'p-event'])
/** Packages whose types (only) any layer may name: interfaces, erased at runtime. */
const TYPE_ONLY_PACKAGES = new Set(['@libp2p/interface'])
/** The files that may load libp2p itself: the network module and the libp2p identity it starts with. */
const LIBP2P_FILES = new Set(['node/mesh/network.ts', 'node/mesh/identity.ts'])

function tsFiles (dir: string): string[] {
  return readdirSync(join(ROOT, dir), { recursive: true, encoding: 'utf8' })
    .filter(f => f.endsWith('.ts'))
    .map(f => join(dir, f))
}

/** Every `import ... from '...'`, `export ... from '...'` and `import '...'` of a source text. */
export function parseImports (file: string, text: string): Import[] {
  const out: Import[] = []
  const stripped = text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '')
  const re = /^\s*(import|export)\s+(type\s+)?([^'";]*?\bfrom\s+)?['"]([^'"]+)['"]/gm
  for (const m of stripped.matchAll(re)) {
    const spec = m[4] ?? ''
    if (m[1] === 'export' && m[3] === undefined) continue
    const target = spec.startsWith('.')
      ? relative(ROOT, resolve(ROOT, dirname(file), spec))
      : packageName(spec)
    out.push({ file, spec, target, typeOnly: m[2] !== undefined })
  }
  return out
}

function packageName (spec: string): string {
  const parts = spec.split('/')
  return spec.startsWith('@') ? parts.slice(0, 2).join('/') : (parts[0] ?? spec)
}

const isLibp2p = (target: string): boolean => target === 'libp2p' || target.startsWith('@libp2p/') || target.startsWith('@chainsafe/')
const isPackage = (i: Import): boolean => !i.spec.startsWith('.') && !i.spec.startsWith('node:')
const under = (path: string, dir: string): boolean => path.startsWith(`${dir}/`)

/** Why `i` breaks a layer rule, or undefined. */
export function violation (i: Import): string | undefined {
  const typeOnlyInterface = i.typeOnly && TYPE_ONLY_PACKAGES.has(i.target)
  if (under(i.file, 'protocols')) {
    if (i.spec.startsWith('.') && !under(i.target, 'protocols')) return 'protocols/ imports only protocols/'
    if (isPackage(i) && !PROTOCOL_PACKAGES.has(i.target) && !typeOnlyInterface) return `protocols/ may use only ${[...PROTOCOL_PACKAGES].join(', ')}`
  }
  if (under(i.file, 'node/scheduler')) {
    if (i.spec.startsWith('.') && !under(i.target, 'node/scheduler') && !under(i.target, 'protocols')) return 'node/scheduler/ imports only node/scheduler/ and protocols/'
    if (isPackage(i) || i.spec.startsWith('node:')) return 'node/scheduler/ is pure: no packages, no node: modules'
  }
  if (isLibp2p(i.target) && !LIBP2P_FILES.has(i.file) && !typeOnlyInterface) return `only ${[...LIBP2P_FILES].join(', ')} load libp2p`
  if (under(i.file, 'node/signer') && under(i.target, 'node/mesh')) return 'node/signer/ does not import node/mesh/'
  if (under(i.file, 'node/builder') && under(i.target, 'node/mesh') && !i.typeOnly) return 'node/builder/ names node/mesh/ types only: mesh-node.ts hands it its ports'
  if (under(i.file, 'node/control') && i.target === 'node/mesh/mesh-node.ts') return 'node/control/ depends on the ControlledNode interface, not MeshNode'
  return undefined
}

function allImports (): Import[] {
  return [...tsFiles('node'), ...tsFiles('protocols')]
    .flatMap(f => parseImports(f, readFileSync(join(ROOT, f), 'utf8')))
}

test('the import graph keeps the layers', () => {
  const imports = allImports()
  assert.ok(imports.length > 100, `parsed only ${imports.length} imports: the parser is broken`)
  const bad = imports.flatMap(i => {
    const why = violation(i)
    return why === undefined ? [] : [`${i.file}: '${i.spec}' (${why})`]
  })
  assert.deepEqual(bad, [])
})

test('each rule catches its violation', () => {
  const cases: Array<[file: string, text: string, broken: boolean]> = [
    ['protocols/nix/x.ts', "import { a } from '../../node/nix/exec.ts'", true],
    ['protocols/nix/x.ts', "import { a } from './hash.ts'", false],
    ['protocols/mesh/x.ts', "import { level } from 'level'", true],
    ['protocols/mesh/x.ts', "import type { Stream } from '@libp2p/interface'", false],
    ['protocols/mesh/x.ts', "import { isPeerId } from '@libp2p/interface'", true],
    ['node/scheduler/x.ts', "import type { Beacon } from '../../protocols/mesh/messages.ts'", false],
    ['node/scheduler/x.ts', "import type { PeerTable } from '../mesh/peer-table.ts'", true],
    ['node/scheduler/x.ts', "import { readFile } from 'node:fs/promises'", true],
    ['node/mesh/builder.ts', "import { createLibp2p } from 'libp2p'", true],
    ['node/cli/x.ts', "import {\n  noise\n} from '@chainsafe/libp2p-noise'", true],
    ['node/mesh/network.ts', "import { createLibp2p } from 'libp2p'", false],
    ['node/signer/x.ts', "import type { NarConsumer } from '../mesh/store-transfer.ts'", true],
    ['node/signer/x.ts', "export { toMessage } from '../mesh/store-transfer.ts'", true],
    ['node/control/x.ts', "import type { MeshNode } from '../mesh/mesh-node.ts'", true],
    ['node/control/x.ts', "import type { StatusReport } from '../mesh/reports.ts'", false],
    ['node/control/x.ts', "// import type { MeshNode } from '../mesh/mesh-node.ts'", false]
  ]
  for (const [file, text, broken] of cases) {
    const found = parseImports(file, text).map(violation).filter(v => v !== undefined)
    assert.equal(found.length > 0, broken, `${file}: ${text} -> ${found.join('; ') || 'no violation'}`)
  }
})

// `meshbuild join`: run a node of the mesh in the foreground until SIGINT/SIGTERM.
import { availableParallelism } from 'node:os'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Argv, CommandModule } from 'yargs'
import { socketPath } from '../../control/control-client.ts'
import { readLocalSystem } from '../../nix/local-system.ts'
import { createLogger, isLogLevel } from '../../log.ts'
import { MESH_SECRET_FILE_ENV, membershipMessages, resolveMeshSecret } from '../mesh-secret.ts'
import { dataDirOption } from '../data-dir.ts'
import { UsageError } from '../exit-codes.ts'
import { formatPublicKey, parsePublicKey, readSecretKeyFile, type PublicKey } from '../../../protocols/nix/signing-key.ts'
import { sandboxPolicy } from '../../nix/nix-config.ts'
import { parseCompression } from '../../cache/compression.ts'
import type { SignerOptions } from '../../mesh/mesh-node.ts'
import { FileJobTrace } from '../../mesh/job-trace.ts'
import { HTTP_LISTEN_DEFAULT_HOST } from '../../observe/http-listener.ts'
import { parseShare } from '../../scheduler/fair-share.ts'

interface JoinArgs {
  'data-dir': string
  listen: string[]
  'max-jobs'?: number
  systems?: string[]
  features?: string[]
  'mandatory-features': string[]
  'speed-factor': number
  share: number
  'mesh-secret-file'?: string
  open: boolean
  bootstrap: string[]
  mdns: boolean
  'min-free-disk': number
  'lease-seconds': number
  'log-level': string
  signer: boolean
  'cache-key'?: string
  'trusted-keys'?: string
  'cache-public-key'?: string[]
  'cache-url'?: string
  'cache-dir'?: string
  'cache-listen'?: string
  'cache-compression': string
  trace?: string
  'http-listen': string
  'serve-builder': boolean
}

const list = (v: unknown): string[] => (Array.isArray(v) ? v : [v]).flatMap(x => String(x).split(/[\s,]+/)).filter(x => x !== '')

export const joinCommand: CommandModule<object, JoinArgs> = {
  command: 'join',
  describe: 'Run a node of the mesh in the foreground',
  builder: (y: Argv) => y
    .option('data-dir', dataDirOption)
    .option('listen', { type: 'array', string: true, default: ['/ip4/0.0.0.0/tcp/0'], describe: 'libp2p multiaddrs to listen on', coerce: list })
    .option('max-jobs', { type: 'number', describe: 'Builds to run at once', defaultDescription: 'number of CPUs' })
    .option('systems', { type: 'array', string: true, describe: 'Systems this node builds for', defaultDescription: 'Nix\'s system and extra-platforms', coerce: list })
    .option('features', { type: 'array', string: true, describe: 'Supported system features', defaultDescription: 'Nix\'s system-features', coerce: list })
    .option('mandatory-features', { type: 'array', string: true, default: [], describe: 'Features a derivation must require to be built here', coerce: list })
    .option('speed-factor', { type: 'number', default: 1, describe: 'Relative speed of this machine (as in Nix machines files)' })
    .option('share', { type: 'number', default: 1, describe: 'This node\'s weight as a submitter: while owners compete, each gets slots in proportion to its share (as Hydra\'s scheduling shares)' })
    .option('mesh-secret-file', { type: 'string', describe: `File holding the mesh secret (meshbuild key generate-mesh-secret FILE); nodes with another secret cannot connect (env ${MESH_SECRET_FILE_ENV})`, defaultDescription: '<data-dir>/mesh.secret, made on first start' })
    .option('open', { type: 'boolean', default: false, describe: 'Join the OPEN mesh: the public secret, shared by every node on the LAN started with --open (trusted networks only)' })
    .option('bootstrap', { type: 'array', string: true, default: [], describe: 'Peers to dial at start (/ip4/…/tcp/…/p2p/…), where multicast does not reach', coerce: list })
    .option('mdns', { type: 'boolean', default: true, describe: 'Find peers by mDNS (--no-mdns to disable)' })
    .option('min-free-disk', { type: 'number', default: 1024, describe: 'MiB free in /nix/store below which the node takes no work' })
    .option('lease-seconds', { type: 'number', default: 20, describe: 'How long a stolen job stays leased without renewal' })
    .option('signer', { type: 'boolean', default: false, describe: 'Be the mesh\'s signing node: check, re-sign and cache what workers build' })
    .option('cache-key', { type: 'string', describe: 'With --signer: the cache\'s secret key file (meshbuild key generate / nix-store --generate-binary-cache-key)' })
    .option('trusted-keys', { type: 'string', describe: 'File of node public keys (name:base64, one a line): the only keys, with this node\'s own, whose signatures admit a peer\'s paths here and (on the signer) a worker\'s outputs into the cache', defaultDescription: 'a peer\'s own announced key for what it serves; the signer trusts only its own key' })
    .option('cache-public-key', { type: 'array', string: true, describe: 'Public key (name:base64, or a file holding one) of the shared cache to substitute from; repeatable. A signer announcing another key is ignored', defaultDescription: 'none: no shared cache is used' })
    .option('cache-url', { type: 'string', describe: 'URL of the shared cache, named directly (needs --cache-public-key)', defaultDescription: 'the URL a signer with a configured key announces' })
    .option('cache-dir', { type: 'string', describe: 'With --signer: where the binary cache lives', defaultDescription: '<data-dir>/cache' })
    .option('cache-listen', { type: 'string', describe: 'With --signer: HOST:PORT to serve the binary cache over HTTP' })
    .option('cache-compression', { type: 'string', default: 'zstd', choices: ['zstd', 'br', 'none'], describe: 'With --signer: how NARs are compressed in the cache' })
    .option('http-listen', { type: 'string', default: `${HTTP_LISTEN_DEFAULT_HOST}:0`, describe: `[HOST:]PORT of this node's read-only HTTP listener (/ the live status page, /metrics for Prometheus, /healthz); loopback (${HTTP_LISTEN_DEFAULT_HOST}) unless HOST names another interface; "off" for none`, defaultDescription: `${HTTP_LISTEN_DEFAULT_HOST}, a free port (shown by status)` })
    .option('serve-builder', { type: 'boolean', default: false, describe: 'Serve plain Nix as a remote builder: a socket (<data-dir>/builder.sock, root only) and the machines file <data-dir>/nix-machines for nix.conf\'s builders = @FILE (meshbuild nix-config prints the lines)' })
    .option('trace', { type: 'string', describe: 'Write every job\'s phases (ready, granted, build started/finished, outputs imported) to FILE as Chrome trace-event JSON (chrome://tracing, Perfetto, bench/trace-report.ts)' })
    .option('log-level', { type: 'string', default: process.env.MESHBUILD_LOG ?? 'info', choices: ['error', 'warn', 'info', 'debug'] })
    .example('$0 join', 'join the mesh on this LAN with defaults from the local Nix')
    .example('$0 join --max-jobs 4 --features big,kvm --speed-factor 2', 'a bigger builder')
    .example('$0 join --signer --cache-key cache.sec --cache-listen 0.0.0.0:8080', 'the signing node, serving the shared cache')
    .example('$0 join --serve-builder', 'also let plain nix-build on this machine build through the mesh (see meshbuild nix-config)')
    .example('$0 join --http-listen 9464', 'metrics for a local Prometheus at http://127.0.0.1:9464/metrics') as unknown as Argv<JoinArgs>,
  handler: async (args) => {
    if (!isLogLevel(args['log-level'])) throw new UsageError(`unknown log level ${args['log-level']}`)
    const log = createLogger('meshbuild', args['log-level'])
    const local = await readLocalSystem()
    const maxJobs = args['max-jobs'] ?? availableParallelism()
    if (!Number.isInteger(maxJobs) || maxJobs < 0) throw new UsageError(`--max-jobs must be a whole number, not ${maxJobs}`)
    if (!(args['speed-factor'] > 0)) throw new UsageError('--speed-factor must be positive')
    // A number given twice reaches here as an array (yargs), which would make the lease NaN.
    if (typeof args['lease-seconds'] !== 'number' || !(args['lease-seconds'] > 0)) throw new UsageError(`--lease-seconds must be one positive number, not ${String(args['lease-seconds'])}`)
    const share = shareArg(args.share)
    const httpListen = args['http-listen'] === 'off' ? undefined : parseHostPort('--http-listen', args['http-listen'], HTTP_LISTEN_DEFAULT_HOST)
    const mesh = await resolveMeshSecret({ open: args.open, dataDir: args['data-dir'], ...(args['mesh-secret-file'] !== undefined ? { file: args['mesh-secret-file'] } : {}) })
    for (const [level, text] of membershipMessages(mesh)) log[level](text)
    const meshSecret = mesh.secret
    const signer = await signerOptions(args)
    const trust = await trustOptions(args)
    const sandbox = sandboxPolicy()
    if (sandbox.sandbox === false) log.warn(`Nix's sandbox is OFF for builds on this node: ${sandbox.reason}`)
    else if (sandbox.sandbox === true) log.info(`Nix builds in its sandbox with build users (${sandbox.reason})`)
    else log.info(`the sandbox is left to Nix's own settings (${sandbox.reason})`)
    // Loaded here, not at the top: libp2p takes a few hundred ms to load, which every other
    // command (and --help) would pay for.
    const { MeshNode } = await import('../../mesh/mesh-node.ts')
    const { startControlServer } = await import('../../control/control-server.ts')
    const node = await MeshNode.start({
      dataDir: args['data-dir'],
      listen: args.listen,
      capabilities: {
        systems: args.systems ?? [local.system, ...local.extraPlatforms],
        features: args.features ?? local.systemFeatures,
        mandatoryFeatures: args['mandatory-features']
      },
      maxJobs,
      speedFactor: args['speed-factor'],
      share,
      meshSecret,
      bootstrap: args.bootstrap,
      mdns: args.mdns,
      leaseMs: args['lease-seconds'] * 1000,
      minFreeDiskBytes: args['min-free-disk'] * 1024 * 1024,
      log,
      ...(signer !== undefined ? { signer } : {}),
      ...(args.trace !== undefined ? { trace: new FileJobTrace(args.trace) } : {}),
      ...(httpListen !== undefined ? { httpListen } : {}),
      ...(args['serve-builder'] ? { serveBuilder: true } : {}),
      ...trust
    })
    const control = await startControlServer(node, socketPath(args['data-dir']), log.child('control'))
    log.info(`node ${node.peerId} ready; control socket ${join(args['data-dir'], 'control.sock')}`)
    await new Promise<void>((resolve) => {
      const stop = (signal: string): void => {
        log.info(`${signal}: stopping`)
        process.off('SIGINT', onInt)
        process.off('SIGTERM', onTerm)
        resolve()
      }
      const onInt = (): void => { stop('SIGINT') }
      const onTerm = (): void => { stop('SIGTERM') }
      process.on('SIGINT', onInt)
      process.on('SIGTERM', onTerm)
    })
    control.close()
    await node.stop()
    log.info('stopped')
  }
}

async function signerOptions (args: JoinArgs): Promise<SignerOptions | undefined> {
  const given = (['cache-key', 'cache-dir', 'cache-listen'] as const).filter(k => args[k] !== undefined)
  if (!args.signer) {
    if (given.length > 0) throw new UsageError(`--${given.join(', --')} only apply with --signer`)
    return undefined
  }
  const keyFile = args['cache-key']
  if (keyFile === undefined) throw new UsageError('--signer needs --cache-key FILE (make one with: meshbuild key generate NAME --secret-file FILE --public-file FILE.pub)')
  const cacheKey = await readSecretKeyFile(keyFile)
  const cacheListen = args['cache-listen'] !== undefined ? parseHostPort('--cache-listen', args['cache-listen']) : undefined
  return {
    cacheKey,
    cacheDir: args['cache-dir'] ?? join(args['data-dir'], 'cache'),
    compression: parseCompression(args['cache-compression']),
    ...(cacheListen !== undefined ? { cacheListen } : {})
  }
}

/**
 * `HOST:PORT` (`[v6]:PORT` too) of a listening option. With `defaultHost`, `PORT` and `:PORT`
 * alone are taken on that host; without it the host must be named.
 */
export function parseHostPort (option: string, text: string, defaultHost?: string): { host: string, port: number } {
  const m = /^(?:(.*):)?(\d+)$/.exec(text)
  const port = Number(m?.[2])
  const host = m?.[1] === undefined || m[1] === '' ? defaultHost : m[1].replace(/^\[|\]$/g, '')
  if (m === null || host === undefined || host === '' || !(port >= 0 && port < 65536)) {
    throw new UsageError(`${option} takes ${defaultHost !== undefined ? '[HOST:]PORT' : 'HOST:PORT'}, not ${text}`)
  }
  return { host, port }
}

/** --trusted-keys, --cache-public-key and --cache-url: whom this node trusts, from its own configuration. */
async function trustOptions (args: JoinArgs): Promise<{ trustedKeys?: PublicKey[], cachePublicKeys?: string[], cacheUrl?: string }> {
  let trustedKeys: PublicKey[] | undefined
  if (args['trusted-keys'] !== undefined) {
    const file = args['trusted-keys']
    const lines = (await readFile(file, 'utf8').catch((err: Error) => { throw new UsageError(`--trusted-keys: ${err.message}`) })).split('\n').map(l => l.trim())
    trustedKeys = []
    lines.forEach((line, i) => {
      if (line === '' || line.startsWith('#')) return
      try {
        trustedKeys?.push(parsePublicKey(line))
      } catch (err) {
        throw new UsageError(`${file}:${i + 1}: ${(err as Error).message}`)
      }
    })
  }
  const cachePublicKeys: string[] = []
  for (const given of args['cache-public-key'] ?? []) {
    // A key is `name:base64`; anything else is taken as a file holding one.
    let text = given.trim()
    if (!/^[^:/\s]+:[A-Za-z0-9+/=]+$/.test(text)) {
      text = (await readFile(given, 'utf8').catch((err: Error) => { throw new UsageError(`--cache-public-key ${given}: not name:base64, and not a readable file (${err.message})`) })).trim()
    }
    try {
      cachePublicKeys.push(formatPublicKey(parsePublicKey(text)))
    } catch (err) {
      throw new UsageError(`--cache-public-key ${given}: ${(err as Error).message}`)
    }
  }
  const cacheUrl = args['cache-url']
  if (cacheUrl !== undefined) {
    if (!/^https?:\/\/[^\s]+$/.test(cacheUrl)) throw new UsageError(`--cache-url takes an http(s) URL, not ${cacheUrl}`)
    if (cachePublicKeys.length === 0) throw new UsageError('--cache-url needs --cache-public-key KEY: a cache is used only with a key this node is configured to trust')
  }
  return {
    ...(trustedKeys !== undefined ? { trustedKeys } : {}),
    ...(cachePublicKeys.length > 0 ? { cachePublicKeys } : {}),
    ...(cacheUrl !== undefined ? { cacheUrl: cacheUrl.replace(/\/+$/, '') } : {})
  }
}

/** --share, refused with a usage error when not a positive number in bounds. */
function shareArg (value: number): number {
  try {
    return parseShare(value)
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
}

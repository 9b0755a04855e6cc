// The README's main job: a small real mesh on this machine. Three test hosts (network
// namespaces, each with its own /nix store) run `meshbuild join`, find each other by mDNS, and
// build a sample DAG submitted on the first one, with the real CLI and its progress bar; then
// plain `nix-build` on the first host builds another copy through its node's builder socket.
import { randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { TestNetwork } from '../test/helpers/test-hosts.ts'
import { MESHBUILD_BIN, instantiateIn, meshSecretFile, startNode, stopNode, waitForMesh, type MeshNodeHandle } from '../test/helpers/mesh-hosts.ts'
import { readFile, writeFile } from 'node:fs/promises'

const HOSTS = 3

async function main (): Promise<void> {
  if (process.getuid?.() !== 0) {
    console.error('demo: test hosts need root (network and mount namespaces); run it as root')
    process.exitCode = 1
    return
  }
  const say = (msg: string): void => { console.log(`\n== ${msg}`) }
  say(`making ${HOSTS} test hosts, each with its own network namespace and /nix store`)
  const net = await TestNetwork.create({ hosts: HOSTS })
  const nodes: MeshNodeHandle[] = []
  try {
    // Membership is closed: the hosts mesh because they share one secret file, made here.
    const secret = await meshSecretFile(net)
    say(`made a mesh secret file shared by the hosts (as meshbuild key generate-mesh-secret does): ${secret}`)
    say('starting `meshbuild join --mesh-secret-file …` on each (2 build slots each; the first with --serve-builder); they find each other by mDNS')
    for (let i = 0; i < HOSTS; i++) nodes.push(await startNode(net, net.host(i), { args: ['--max-jobs', '2', ...(i === 0 ? ['--serve-builder'] : [])] }))
    await waitForMesh(nodes)
    for (const n of nodes) console.log(`  ${n.host.name} ${n.host.address}  peer ${n.peerId}`)

    const a = nodes[0] as MeshNodeHandle
    const sample = fileURLToPath(new URL('./sample-dag.nix', import.meta.url))
    const tag = randomBytes(4).toString('hex')
    const expr = `import ${sample} { tag = "${tag}"; }`
    const drvs = await instantiateIn(net, a.host, expr, ['release', 'docs'])
    say(`submitting ${drvs.length} derivations (13 with their dependencies) on ${a.host.name}`)
    const child = a.host.spawn(process.execPath, [MESHBUILD_BIN, 'submit', '-', '--data-dir', a.dataDir], { stdio: ['pipe', 'inherit', 'inherit'] })
    child.stdin?.end(drvs.join('\n') + '\n')
    const code = await new Promise<number>((resolve) => { child.on('exit', (c) => { resolve(c ?? 1) }) })
    if (code !== 0) throw new Error(`meshbuild submit exited with ${code}`)

    say(`meshbuild status on ${a.host.name}`)
    const status = await a.host.execText(process.execPath, [MESHBUILD_BIN, 'status', '--data-dir', a.dataDir])
    process.stdout.write(status)
    // Each node's HTTP listener is on loopback inside its host: read A's metrics from there.
    const json = JSON.parse(await a.host.execText(process.execPath, [MESHBUILD_BIN, 'status', '--json', '--data-dir', a.dataDir])) as { http?: { url: string, metrics: string } }
    if (json.http !== undefined) {
      say(`${a.host.name}'s status page ${json.http.url}/ and metrics ${json.http.metrics} (loopback in its host: ip netns exec ${a.host.name} curl ${json.http.metrics})`)
      const fetchText = 'const r = await fetch(process.argv[1]); process.stdout.write(await r.text())'
      const metrics = await a.host.execText(process.execPath, ['--input-type=module', '-e', fetchText, json.http.metrics])
      for (const line of metrics.split('\n').filter(l => /^meshbuild_(jobs_built|nar_bytes|steals|slots)/.test(l))) console.log(`  ${line}`)
    }
    say(`plain Nix through the mesh: \`meshbuild nix-config\` on ${a.host.name} prints`)
    const config = await a.host.execText(process.execPath, [MESHBUILD_BIN, 'nix-config', '--data-dir', a.dataDir])
    process.stdout.write(config)
    const builders = config.split('\n').find(l => l.startsWith('builders = '))?.slice('builders = '.length) ?? ''
    const plain = `import ${sample} { tag = "${tag}-nix-build"; }`
    const file = `${net.sharedDir}/demo-nix-build.nix`
    await writeFile(file, plain)
    say(`nix-build ${file} -A release --option builders '${builders}' --max-jobs 0   (on ${a.host.name}: every build goes to the mesh)`)
    const nixBuild = a.host.spawn('nix-build', [file, '-A', 'release', '--no-out-link', '--option', 'builders', builders, '--max-jobs', '0'], { stdio: ['ignore', 'inherit', 'inherit'] })
    const nixCode = await new Promise<number>((resolve) => { nixBuild.on('exit', (c) => { resolve(c ?? 1) }) })
    if (nixCode !== 0) throw new Error(`nix-build through the builder socket exited with ${nixCode}`)

    say('who built what (the first host builds nothing for its own plain Nix: its peers do)')
    for (const n of nodes) {
      const log = await readFile(n.logFile, 'utf8')
      const built = [...log.matchAll(/\] built \/nix\/store\/[a-z0-9]{32}-(\S+)\.drv/g)].map(m => m[1])
      console.log(`  ${n.host.name}: ${built.length} build(s): ${built.join(', ')}`)
    }
  } finally {
    for (const n of nodes) await stopNode(n).catch(() => {})
    await net.destroy()
  }
}

await main()

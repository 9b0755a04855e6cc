// The multi-host harness: separate Nix stores, real multicast and TCP between hosts, nothing
// beyond them, and teardown that leaves nothing behind — on success, on a signal, after a crash.
import assert from 'node:assert/strict'
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { networkInterfaces } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { exec } from '../../node/nix/exec.ts'
import { shDrv } from '../helpers/nix.ts'
import { sweepStale, TestNetwork, waitForOutput, type TestHost } from '../helpers/test-hosts.ts'
import { waitFor } from '../helpers/wait.ts'

const HARNESS_URL = new URL('../helpers/test-hosts.ts', import.meta.url).href
const MDNS_URL = import.meta.resolve('multicast-dns')

/** What `ip` lists of a run: namespaces and root-namespace links named for it. */
function leftovers (runId: string): { namespaces: string[], links: string[] } {
  const prefix = `mbt-${runId}-`
  const ns = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8', timeout: 10_000 }).stdout
  const links = spawnSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8', timeout: 10_000 }).stdout
  return {
    namespaces: ns.split('\n').map(l => l.split(' ')[0] ?? '').filter(n => n.startsWith(prefix)),
    links: links.split('\n').map(l => (l.split(': ')[1] ?? '').split('@')[0] ?? '').filter(n => n.startsWith(prefix))
  }
}

/** True while `pid` runs; a zombie (dead, not yet reaped by whoever inherited it) counts as dead. */
function processAlive (pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z'
  } catch {
    return false
  }
}

async function eventually (check: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) return false
    await new Promise(resolve => setTimeout(resolve, 25))
  }
  return true
}

/** Resolves when `child` has exited; rejects after `timeoutMs`. */
async function exitWithin (child: ChildProcess, timeoutMs: number): Promise<void> {
  if (child.exitCode != null || child.signalCode != null) return
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error(`process ${child.pid} did not exit within ${timeoutMs} ms`)) }, timeoutMs)
    child.once('exit', () => { clearTimeout(timer); resolve() })
  })
}

/** Runs a Node ES module given as text inside a host. */
async function nodeIn (host: TestHost, script: string, timeoutMs = 15_000): Promise<string> {
  return await host.execText('node', ['--input-type=module', '-e', script], { timeoutMs })
}

describe('test hosts', { timeout: 180_000 }, () => {
  let net: TestNetwork

  before(async () => {
    net = await TestNetwork.create({ hosts: 2 })
  })

  after(async () => {
    await net?.destroy()
  })

  it('each host builds in a store of its own: its outputs are valid there and nowhere else', async () => {
    const built: Array<{ host: TestHost, drv: string, out: string }> = []
    for (const host of net.hosts) {
      // Named for the run, so no earlier run can have put the path in another store.
      const file = join(net.sharedDir, `probe-${host.index}.nix`)
      await writeFile(file, shDrv(`mbt-probe-${net.runId}-${host.index}`, `echo built-in-${host.name} > $out`))
      const drv = (await host.execText('nix-instantiate', [file])).trim()
      const out = (await host.execText('nix-store', ['--realise', drv])).trim()
      assert.match(out, /^\/nix\/store\/[0-9a-z]{32}-mbt-probe-/)
      assert.equal(await host.execText('cat', [out]), `built-in-${host.name}\n`)
      assert.equal(readFileSync(join(host.nixDir, out.slice('/nix/'.length)), 'utf8'), `built-in-${host.name}\n`)
      built.push({ host, drv, out })
    }
    for (const { host, drv, out } of built) {
      for (const other of net.hosts) {
        const r = await other.exec('nix-store', ['--check-validity', drv, out])
        assert.equal(r.code === 0, other === host, `${out} valid in ${other.name}: exit ${r.code}`)
      }
      const onMachine = await exec('nix-store', ['--check-validity', out])
      assert.notEqual(onMachine.code, 0, `${out} must not be valid in the machine's own store`)
      assert.equal(existsSync(out), false)
    }
  })

  it('mDNS crosses the bridge: host 1 answers a query host 0 multicasts', async () => {
    const [h0, h1] = [net.host(0), net.host(1)]
    const name = `mbt-${net.runId}-h1.local`
    const responder = h1.spawn('node', ['--input-type=module', '-e', `
      const mdns = (await import(${JSON.stringify(MDNS_URL)})).default()
      mdns.on('query', q => {
        if (q.questions.some(x => x.name === ${JSON.stringify(name)} && x.type === 'A')) {
          mdns.respond({ answers: [{ name: ${JSON.stringify(name)}, type: 'A', ttl: 120, data: ${JSON.stringify(h1.address)} }] })
        }
      })
      mdns.on('ready', () => console.log('ready'))
    `])
    try {
      await waitForOutput(responder, /ready/, { timeoutMs: 10_000 })
      const answer = JSON.parse(await nodeIn(h0, `
        const mdns = (await import(${JSON.stringify(MDNS_URL)})).default()
        const ask = () => mdns.query({ questions: [{ name: ${JSON.stringify(name)}, type: 'A' }] })
        mdns.on('ready', ask)
        const timer = setInterval(ask, 250)
        mdns.on('response', (res, rinfo) => {
          const a = res.answers.find(x => x.name === ${JSON.stringify(name)})
          if (a == null) return
          console.log(JSON.stringify({ from: rinfo.address, data: a.data }))
          clearInterval(timer)
          mdns.destroy()
        })
      `)) as { from: string, data: string }
      assert.deepEqual(answer, { from: h1.address, data: h1.address })
    } finally {
      responder.kill('SIGKILL')
    }
  })

  it('TCP reaches the other host by its address; loopback is each host\'s own; nothing else is reachable', async () => {
    const [h0, h1] = [net.host(0), net.host(1)]
    const port = 7431
    const server = h1.spawn('node', ['--input-type=module', '-e', `
      import net from 'node:net'
      net.createServer(c => c.end('hello from ${h1.name} to ' + c.remoteAddress))
        .listen(${port}, '0.0.0.0', () => console.log('listening'))
    `])
    const connect = (host: string): string => `
      import net from 'node:net'
      const c = net.connect({ host: ${JSON.stringify(host)}, port: ${port}, timeout: 3000 })
      let got = ''
      c.on('data', d => { got += d })
      c.on('end', () => console.log(got))
      c.on('timeout', () => { console.log('timeout'); c.destroy() })
      c.on('error', e => console.log(e.code))
    `
    const machine = Object.values(networkInterfaces()).flat()
      .find(a => a != null && a.family === 'IPv4' && !a.internal)?.address ?? '192.0.2.2'
    try {
      await waitForOutput(server, /listening/, { timeoutMs: 10_000 })
      const cases = [
        { from: h0, to: h1.address, expect: `hello from ${h1.name} to ${h0.address}` },
        { from: h1, to: '127.0.0.1', expect: `hello from ${h1.name} to 127.0.0.1` },
        { from: h0, to: '127.0.0.1', expect: 'ECONNREFUSED' }, // host 0's loopback, not host 1's
        { from: h0, to: machine, expect: 'ENETUNREACH' } // no default route, no way out
      ]
      for (const c of cases) {
        assert.equal((await nodeIn(c.from, connect(c.to))).trim(), c.expect, `${c.from.name} -> ${c.to}`)
      }
      const routes = await h0.execText('ip', ['-4', 'route', 'show', 'table', 'all'])
      assert.doesNotMatch(routes, /^default/m)
    } finally {
      server.kill('SIGKILL')
    }
  })

  it('a command past its timeout is killed and the error names the host and the command', async () => {
    const h1 = net.host(1)
    await assert.rejects(h1.exec('sleep', ['30'], { timeoutMs: 300 }), (err: Error) => {
      assert.equal(err.name, 'HostCommandTimeout')
      assert.match(err.message, new RegExp(`sleep 30 in test host ${h1.name} ran longer than 300 ms`))
      return true
    })
    assert.ok(await eventually(() => h1.pids().length === 0, 2_000), `processes left in ${h1.name}: ${h1.pids().join(' ')}`)
  })

  it('a failing command reports host, command and what it said', async () => {
    const h0 = net.host(0)
    await assert.rejects(h0.execText('nix-store', ['--check-validity', '/nix/store/00000000000000000000000000000000-none']), (err: Error) => {
      assert.equal(err.name, 'HostCommandFailed')
      assert.match(err.message, new RegExp(`in test host ${h0.name} exited with 1`))
      return true
    })
  })
})

describe('test network lifetime', { timeout: 120_000 }, () => {
  it('creates 3 hosts, and destroy() removes namespaces, links, processes and directories, idempotently', async t => {
    const forwarding = readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8')
    const started = performance.now()
    const net = await TestNetwork.create({ hosts: 3 })
    const createMs = performance.now() - started
    let destroyMs = 0
    try {
      t.diagnostic(`created 3 hosts in ${createMs.toFixed(0)} ms`)
      const { namespaces, links } = leftovers(net.runId)
      assert.deepEqual(namespaces.sort(), net.hosts.map(h => h.name).sort())
      assert.equal(links.length, 4, `the bridge and one veth end per host: ${links.join(' ')}`)
      assert.ok(links.includes(net.bridge))
      const sleeper = net.host(2).spawn('sleep', ['300'])
      await eventually(() => net.host(2).pids().length > 0, 5_000)
      // `sleep` ends on SIGTERM; this one ignores it, so teardown has to escalate to SIGKILL.
      const stubborn = net.host(1).spawn('sh', ['-c', 'trap "" TERM; echo trapped; while :; do sleep 0.1; done'])
      await waitForOutput(stubborn, /trapped/, { timeoutMs: 5_000 })
      const pids = [sleeper.pid, stubborn.pid, ...net.host(1).pids()].filter((p): p is number => p != null)

      const t0 = performance.now()
      await net.destroy()
      destroyMs = performance.now() - t0
      t.diagnostic(`destroyed them in ${destroyMs.toFixed(0)} ms`)

      assert.deepEqual(leftovers(net.runId), { namespaces: [], links: [] })
      assert.equal(existsSync(net.dir), false)
      assert.equal(existsSync(net.host(0).root), false)
      assert.ok(await eventually(() => pids.every(p => !processAlive(p)), 3_000), `still alive: ${pids.filter(processAlive).join(' ')}`)
      await net.destroy() // idempotent
      await assert.rejects(net.host(0).exec('true'), { name: 'HostGone' })
      assert.equal(readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8'), forwarding)
    } finally {
      await net.destroy()
    }
  })

  // A child process makes a network (with a process running in it) and then dies one way or another.
  const cases = [
    { how: 'SIGINT', cleansItself: true },
    { how: 'SIGTERM', cleansItself: true },
    { how: 'SIGKILL', cleansItself: false } // no handler runs: sweepStale() must clean up
  ] as const
  for (const { how, cleansItself } of cases) {
    it(`a run ended by ${how} leaves nothing behind${cleansItself ? '' : ' once sweepStale() has run'}`, async () => {
      const child = spawn(process.execPath, ['--input-type=module', '-e', `
        const { TestNetwork } = await import(${JSON.stringify(HARNESS_URL)})
        const net = await TestNetwork.create({ hosts: 1, sweep: false })
        net.host(0).spawn('sleep', ['300'])
        console.log(JSON.stringify({ runId: net.runId, dir: net.dir }))
        setInterval(() => {}, 1000)
      `], { stdio: ['ignore', 'pipe', 'pipe'] })
      try {
        const [line = ''] = await waitForOutput(child, /\{.*\}/, { timeoutMs: 15_000 })
        const { runId, dir } = JSON.parse(line) as { runId: string, dir: string }
        assert.equal(leftovers(runId).namespaces.length, 1)
        // The spawn's wrapper may still be between fork and exec: wait for the sleep itself.
        const sleepsInside = (): number[] => spawnSync('ip', ['netns', 'pids', `mbt-${runId}-h0`], { encoding: 'utf8', timeout: 10_000 }).stdout
          .split('\n').filter(l => l !== '').map(Number)
          .filter(pid => { try { return readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'sleep' } catch { return false } })
        await waitFor(() => sleepsInside().length === 1, 10_000, 'the sleep to run in the host')
        const inside = sleepsInside()

        child.kill(how)
        await exitWithin(child, 10_000)
        if (cleansItself) {
          assert.equal(child.signalCode, how, 'the signal still ends the process')
        } else {
          assert.equal(leftovers(runId).namespaces.length, 1, 'a killed run leaves its namespace')
          await sweepStale()
        }
        assert.deepEqual(leftovers(runId), { namespaces: [], links: [] })
        assert.equal(existsSync(dir), false)
        assert.ok(await eventually(() => inside.every(p => !processAlive(p)), 3_000), 'the host\'s process is killed')
      } finally {
        child.kill('SIGKILL')
      }
    })
  }

  it('sweepStale() leaves a live run of another process alone', async () => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', `
      const { TestNetwork } = await import(${JSON.stringify(HARNESS_URL)})
      const net = await TestNetwork.create({ hosts: 1, sweep: false })
      console.log(JSON.stringify({ runId: net.runId }))
      process.stdin.on('end', async () => { await net.destroy(); process.exit(0) })
      process.stdin.resume()
    `], { stdio: ['pipe', 'pipe', 'pipe'] })
    try {
      const [line = ''] = await waitForOutput(child, /\{.*\}/, { timeoutMs: 15_000 })
      const { runId } = JSON.parse(line) as { runId: string }
      const removed = await sweepStale()
      assert.equal(removed.includes(runId), false)
      assert.equal(leftovers(runId).namespaces.length, 1)
      child.stdin?.end()
      await exitWithin(child, 10_000)
      assert.equal(child.exitCode, 0)
      assert.deepEqual(leftovers(runId), { namespaces: [], links: [] })
    } finally {
      child.kill('SIGKILL')
    }
  })
})

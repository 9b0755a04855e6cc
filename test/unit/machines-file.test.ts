// The machines file behind `builders = @file`: the socket with the union of the building peers'
// systems and features and a job count that fills the mesh; empty when no peer builds (Nix then
// builds locally), and the check for what no single peer builds.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { defaultMaxJobs, machinesFileText, meshCanBuild, type PeerCapabilities } from '../../node/builder/machines-file.ts'

const PEERS: PeerCapabilities[] = [
  { systems: ['x86_64-linux'], features: ['kvm', 'big-parallel'], maxJobs: 2 },
  { systems: ['x86_64-linux', 'i686-linux'], features: ['kvm'], maxJobs: 4 }
]

describe('machinesFileText', () => {
  it('names the unix:// socket with its root, the systems, four jobs per peer slot and the features, in the field order of nix.conf', () => {
    assert.equal(machinesFileText('/d/builder.sock', '/d/root', PEERS),
      'unix:///d/builder.sock?root=/d/root i686-linux,x86_64-linux - 24 1 big-parallel,kvm -\n')
  })

  it('writes - for an empty feature list and honours an explicit job count', () => {
    assert.equal(machinesFileText('/s', '/r', [{ systems: ['aarch64-linux'], features: [], maxJobs: 1 }], 9), 'unix:///s?root=/r aarch64-linux - 9 1 - -\n')
  })

  it('is empty with no peer that builds: a "-" systems field would mean this machine\'s own system to Nix', () => {
    assert.equal(machinesFileText('/s', '/r', []), '')
    assert.equal(machinesFileText('/s', '/r', [{ systems: ['x86_64-linux'], features: ['kvm'], maxJobs: 0 }]), '')
  })

  it('leaves out peers without slots from systems, features and jobs', () => {
    const text = machinesFileText('/s', '/r', [...PEERS, { systems: ['riscv64-linux'], features: ['gpu'], maxJobs: 0 }])
    assert.doesNotMatch(text, /riscv|gpu/)
    assert.equal(defaultMaxJobs(PEERS), 24, 'four builds per slot of the peers: Nix polls a postponed build only every 5 s')
    assert.equal(defaultMaxJobs([{ systems: ['x86_64-linux'], features: [], maxJobs: 1 }]), 16, 'a small mesh still gets enough to keep it busy')
  })
})

describe('meshCanBuild', () => {
  it('needs one peer with the system and every required feature', () => {
    assert.equal(meshCanBuild(PEERS, 'x86_64-linux', ['kvm', 'big-parallel']), true)
    assert.equal(meshCanBuild(PEERS, 'i686-linux', ['big-parallel']), false, 'features of two different peers were combined')
    assert.equal(meshCanBuild(PEERS, 'aarch64-linux', []), false)
  })

  it('ignores peers with no build slots', () => {
    assert.equal(meshCanBuild([{ systems: ['x86_64-linux'], features: [], maxJobs: 0 }], 'x86_64-linux', []), false)
  })
})

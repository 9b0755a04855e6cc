// The sandbox policy: Nix's sandbox wherever root has build users; off only without them.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { nixConfigText, sandboxPolicy, type SandboxProbe } from '../../node/nix/nix-config.ts'
import { tempDir } from '../helpers/temp-dir.ts'

describe('sandboxPolicy', () => {
  let dir: { dir: string, cleanup: () => Promise<void> }
  let withUsers: string
  let noUsers: string
  let noGroup: string
  let conf: string
  let confEmptyGroup: string
  let confOtherGroup: string

  before(async () => {
    dir = await tempDir()
    withUsers = join(dir.dir, 'group-users')
    noUsers = join(dir.dir, 'group-empty')
    noGroup = join(dir.dir, 'group-none')
    conf = join(dir.dir, 'nix.conf')
    confEmptyGroup = join(dir.dir, 'nix-empty.conf')
    confOtherGroup = join(dir.dir, 'nix-other.conf')
    await writeFile(withUsers, 'root:x:0:\nnixbld:x:994:nixbld1,nixbld2\nbuilders:x:995:\n')
    await writeFile(noUsers, 'root:x:0:\nnixbld:x:994:\n')
    await writeFile(noGroup, 'root:x:0:\n')
    await writeFile(conf, 'sandbox = false\n')
    await writeFile(confEmptyGroup, 'build-users-group =\n')
    await writeFile(confOtherGroup, 'build-users-group = builders # no members\n')
  })
  after(async () => { await dir?.cleanup() })

  const cases: Array<[string, () => SandboxProbe, boolean | undefined, boolean, RegExp]> = [
    ['root with build users: on, whatever Debian\'s nix.conf says', () => ({ uid: 0, groupFile: withUsers, nixConfFile: conf, inherited: '' }), true, false, /build users \(group nixbld\)/],
    ['root, group without members: off, and the group cleared', () => ({ uid: 0, groupFile: noUsers, nixConfFile: conf, inherited: '' }), false, true, /has no members/],
    ['root, no such group: off', () => ({ uid: 0, groupFile: noGroup, nixConfFile: conf, inherited: '' }), false, true, /has no members/],
    ['root, NIX_CONFIG empties build-users-group (test hosts): off', () => ({ uid: 0, groupFile: withUsers, nixConfFile: conf, inherited: 'substituters =\nbuild-users-group =' }), false, false, /build-users-group empty/],
    ['root, nix.conf empties build-users-group: off', () => ({ uid: 0, groupFile: withUsers, nixConfFile: confEmptyGroup, inherited: '' }), false, false, /build-users-group empty/],
    ['root, NIX_CONFIG names the group back after nix.conf emptied it: on', () => ({ uid: 0, groupFile: withUsers, nixConfFile: confEmptyGroup, inherited: 'build-users-group = nixbld' }), true, false, /group nixbld/],
    ['root, nix.conf names a group without members: off', () => ({ uid: 0, groupFile: withUsers, nixConfFile: confOtherGroup, inherited: '' }), false, true, /builders has no members/],
    ['not root: left to Nix', () => ({ uid: 1000, groupFile: withUsers, nixConfFile: conf, inherited: '' }), undefined, false, /not running as root/]
  ]
  for (const [what, probe, sandbox, clear, reason] of cases) {
    it(what, () => {
      const p = sandboxPolicy(probe())
      assert.equal(p.sandbox, sandbox)
      assert.equal(p.clearBuildUsersGroup, clear)
      assert.match(p.reason, reason)
    })
  }

  it('the NIX_CONFIG text carries the policy, and the user\'s own config comes after it', () => {
    const text = nixConfigText({}, 'build-users-group =\nsandbox = relaxed')
    if (process.getuid?.() === 0) {
      assert.ok(text.indexOf('sandbox = false') >= 0 && text.indexOf('sandbox = false') < text.indexOf('sandbox = relaxed'), text)
    } else {
      assert.ok(!text.includes('sandbox = false'), text)
    }
  })
})

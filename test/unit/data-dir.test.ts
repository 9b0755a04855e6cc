// The data dir default: --data-dir aside, $MESHBUILD_DATA_DIR, then systemd's $STATE_DIRECTORY, then XDG.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { defaultDataDir } from '../../node/cli/data-dir.ts'

describe('defaultDataDir', () => {
  it('takes $MESHBUILD_DATA_DIR first, even under systemd', () => {
    assert.equal(defaultDataDir({ MESHBUILD_DATA_DIR: '/srv/mb', STATE_DIRECTORY: '/var/lib/meshbuild' }), '/srv/mb')
  })
  it('takes systemd\'s state directory for a node run as a service, the first of several', () => {
    assert.equal(defaultDataDir({ STATE_DIRECTORY: '/var/lib/meshbuild', XDG_DATA_HOME: '/home/u/.local/share' }), '/var/lib/meshbuild')
    assert.equal(defaultDataDir({ STATE_DIRECTORY: '/var/lib/meshbuild:/var/lib/other' }), '/var/lib/meshbuild')
  })
  it('falls back to $XDG_DATA_HOME/meshbuild, ignoring empty variables', () => {
    assert.equal(defaultDataDir({ MESHBUILD_DATA_DIR: '', STATE_DIRECTORY: '', XDG_DATA_HOME: '/home/u/.local/share' }), '/home/u/.local/share/meshbuild')
  })
})

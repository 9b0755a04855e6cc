// Placeholder: replaced by the real command.
import type { CommandModule } from 'yargs'

export const derivationCommand: CommandModule = {
  command: 'derivation',
  describe: '(not yet implemented)',
  handler: () => { throw new Error('derivation: not implemented yet') }
}

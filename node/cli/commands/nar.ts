// Placeholder: replaced by the real command.
import type { CommandModule } from 'yargs'

export const narCommand: CommandModule = {
  command: 'nar',
  describe: '(not yet implemented)',
  handler: () => { throw new Error('nar: not implemented yet') }
}

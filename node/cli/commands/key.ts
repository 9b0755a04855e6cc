// Placeholder: replaced by the real command.
import type { CommandModule } from 'yargs'

export const keyCommand: CommandModule = {
  command: 'key',
  describe: '(not yet implemented)',
  handler: () => { throw new Error('key: not implemented yet') }
}

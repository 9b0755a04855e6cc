// Logging with levels, scoped per component: `2026-11-23T04:40:00.000Z INFO  [mesh] message`.
// Level from --log-level or MESHBUILD_LOG (error, warn, info, debug); lines go to stderr.

export type LogLevel = 'error' | 'warn' | 'info' | 'debug'
const ORDER: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 }

export interface Logger {
  error: (msg: string) => void
  warn: (msg: string) => void
  info: (msg: string) => void
  debug: (msg: string) => void
  child: (scope: string) => Logger
}

export function isLogLevel (v: string): v is LogLevel {
  return v in ORDER
}

export function createLogger (scope: string, level: LogLevel = envLevel(), write: (line: string) => void = (l) => { process.stderr.write(l) }): Logger {
  const at = (lv: LogLevel) => (msg: string): void => {
    if (ORDER[lv] > ORDER[level]) return
    write(`${new Date().toISOString()} ${lv.toUpperCase().padEnd(5)} [${scope}] ${msg}\n`)
  }
  return {
    error: at('error'),
    warn: at('warn'),
    info: at('info'),
    debug: at('debug'),
    child: (sub) => createLogger(`${scope}:${sub}`, level, write)
  }
}

function envLevel (): LogLevel {
  const v = process.env.MESHBUILD_LOG ?? 'info'
  return isLogLevel(v) ? v : 'info'
}

import ArgumentParser
import Foundation

// Line-buffered stdout, so progress lines reach a log file (or a pipe) as they are printed.
setvbuf(stdout, nil, _IOLBF, 0)
LDM.main()

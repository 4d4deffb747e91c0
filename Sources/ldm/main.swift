import ArgumentParser
LDM.main()

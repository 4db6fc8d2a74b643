# encoding: UTF-8
#
# An automator for coopr's tests: every action appends one JSON line to
# {provisioner.work.dir}/actions.jsonl; an action with a `script` field runs that script resource
# (activated by the provisioner under ./scripts of the automator's working directory) locally.

require 'json'
require 'open3'

class CooprTestAutomator < Coopr::Plugin::Automator
  def record(action, inputmap)
    output = nil
    fields = inputmap['fields'] || {}
    if fields['script']
      script = File.join(Dir.pwd, 'scripts', fields['script'])
      output, status = Open3.capture2e(script, *fields['args'].to_s.split(' '))
      raise "script #{script} failed: #{output}" unless status.success?
    end
    line = JSON.generate('action' => action, 'hostname' => inputmap['hostname'],
                         'ipaddress' => inputmap['ipaddress'], 'service' => (@task['config']['service'] || {})['name'],
                         'cluster' => @task['config']['cluster'], 'output' => output)
    File.open(File.join(@env['provisioner.work.dir'], 'actions.jsonl'), 'a') do |f|
      f.flock(File::LOCK_EX)
      f.puts(line)
    end
    @result['status'] = 0
    @result['stdout'] = output.to_s
  end

  def bootstrap(inputmap)
    record('bootstrap', inputmap)
  end

  def install(inputmap)
    record('install', inputmap)
  end

  def configure(inputmap)
    record('configure', inputmap)
  end

  def init(inputmap)
    record('initialize', inputmap)
  end

  def start(inputmap)
    record('start', inputmap)
  end

  def stop(inputmap)
    record('stop', inputmap)
  end

  def remove(inputmap)
    record('remove', inputmap)
  end
end
